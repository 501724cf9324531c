"""Never-lost notifications: the fsync'd disk outbox and the ordered Redis pusher."""
