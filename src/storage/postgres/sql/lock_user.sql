-- The user's row, locked until the transaction ends, and the current epoch. Its own last
-- position, not raised to `forgotten_pos` as `lock_users.sql` raises it for an append: a fetch
-- returns it as the client's cursor, and a cursor raised whenever a reap forgets someone would
-- make every quiet client's next fetch a confirmation (a watermark write and a notification).
SELECT last_pos, trimmed_to, queued, bytes, acks, reply_bytes, origins,
       (SELECT value FROM meta WHERE key = 'epoch')
FROM users WHERE user_id = $1::text FOR UPDATE
