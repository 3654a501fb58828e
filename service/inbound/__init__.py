"""Mail that comes back: bounces, complaints, unsubscribes by mail, replies.

    classify_message(raw) -> Classification            what a message is (no I/O)
    process_message(session, settings, raw, ...) -> InboundMessage   classify, act, store
    forward_target / forward_reply / record_forward    replies forwarded to the press office
    listing: list_blast_replies, recipient_events, blast_inbound_counts ...   read for the doors
    run_listener(settings, host=, port=, ...)          the `communique inbound` SMTP/LMTP server
"""
