-- Of these users, those that look forgettable (nothing counted, no client record), locked in
-- user order; rows busy now are skipped, for a later reap. `forget_users.sql` checks again
-- once they are locked.
SELECT u.user_id FROM users u
WHERE u.user_id = ANY($1::text[]) AND u.queued <= 0 AND u.acks <= 0 AND u.origins <= 0
  AND u.reply_bytes <= 0 AND NOT EXISTS (SELECT 1 FROM clients c WHERE c.user_id = u.user_id)
ORDER BY u.user_id FOR UPDATE SKIP LOCKED
