-- A user's row if there is one, locked until the transaction ends: what a user's own
-- membership or data takes, as a reap does, without making a row for it.
SELECT 1 FROM users WHERE user_id = $1::text FOR UPDATE
