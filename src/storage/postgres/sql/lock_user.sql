-- The user's row, locked until the transaction ends, and the current epoch. Its last position
-- is at least that of every user forgotten so far (see `forget_users.sql`).
SELECT greatest(last_pos, (SELECT value::bigint FROM meta WHERE key = 'forgotten_pos')),
       trimmed_to, queued, bytes, acks, reply_bytes, origins,
       (SELECT value FROM meta WHERE key = 'epoch')
FROM users WHERE user_id = $1::text FOR UPDATE
