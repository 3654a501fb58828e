"""Stage 4, the durable queue and the worker: blasts (states, audience, the atomic start), the ledger
(queue), the worker's parts (claimer -> sender -> recorder, limits, brake), SMTP and the scheduler."""
