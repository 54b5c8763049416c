"""Email: rendering (text, HTML) and delivery through the durable outbox over SMTP."""
