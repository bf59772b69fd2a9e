-- In user order, so that two calls over the same users never wait for each other in a circle.
SELECT user_id, last_pos, queued, bytes, acks, origins
FROM users WHERE user_id = ANY($1::text[]) ORDER BY user_id FOR UPDATE
