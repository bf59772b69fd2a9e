-- The user's row, locked until the transaction ends, and the current epoch.
SELECT last_pos, trimmed_to, queued, bytes, acks, reply_bytes, origins,
       (SELECT value FROM meta WHERE key = 'epoch')
FROM users WHERE user_id = $1::text FOR UPDATE
