-- The user's row, made if missing, and locked until the transaction ends: an existing row is
-- locked without being rewritten (`WHERE false` still locks it), and one a reap removes
-- meanwhile is made again, so the caller always ends up holding a row.
INSERT INTO users (user_id) VALUES ($1::text)
ON CONFLICT (user_id) DO UPDATE SET last_pos = users.last_pos WHERE false
