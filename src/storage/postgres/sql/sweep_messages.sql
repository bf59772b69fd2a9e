-- Expired messages of a bounded number of users, whose rows are locked first (in order,
-- skipping users busy right now: the next sweep takes them).
WITH due AS (
    SELECT user_id FROM users WHERE user_id IN (
        SELECT user_id FROM messages WHERE expires_at <= $1::bigint ORDER BY expires_at LIMIT $2::bigint)
    ORDER BY user_id FOR UPDATE SKIP LOCKED
)
DELETE FROM messages m USING due WHERE m.user_id = due.user_id AND m.expires_at <= $1::bigint
