-- A signal too long for a notification: its body is a row, the notification its id.
WITH body AS (
    INSERT INTO signal_bodies (body, created_at) VALUES ($2::text, $3::bigint) RETURNING id
)
SELECT pg_notify($1::text, '@' || id) FROM body
