-- In user order, so that two calls over the same users never wait for each other in a circle.
-- Last positions are at least that of every user forgotten so far (see `forget_users.sql`).
SELECT user_id,
       greatest(last_pos, (SELECT value::bigint FROM meta WHERE key = 'forgotten_pos')),
       queued, bytes, acks, origins
FROM users WHERE user_id = ANY($1::text[]) ORDER BY user_id FOR UPDATE
