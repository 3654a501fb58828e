"""Stage 3, a release made into each journalist's email: prepared once per release (MIME skeleton),
then one personal message per recipient; the words of the email; unsubscribe tokens."""
