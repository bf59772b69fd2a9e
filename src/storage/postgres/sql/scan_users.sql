-- The next users after $1, in user order: a bounded slice of the table per reap, so that rows
-- no event pointed the reap at (those of an older version, a claim's alone) are forgotten too.
SELECT user_id FROM users WHERE user_id > $1::text ORDER BY user_id LIMIT $2::bigint
