"""Stage 1, media contacts: the field definitions, CSV files as offices export them, import, the store
(search, edit, export, lists, consent, suppression)."""
