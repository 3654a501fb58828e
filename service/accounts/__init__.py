"""Who may use the service: users (web sign-in, roles) and API keys."""
