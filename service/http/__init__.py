"""What the HTTP doors (web, api, webhook, ops) share: the request's session and settings,
problem documents, JSON Schema errors."""
