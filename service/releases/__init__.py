"""Stage 2, releases: Markdown import, the store (variants, embargo, attachments), the checks shown
before sending."""
