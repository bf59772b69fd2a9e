-- As `ensure_user.sql`, for several users, locked in user order.
INSERT INTO users (user_id) SELECT DISTINCT u FROM unnest($1::text[]) AS u ORDER BY u
ON CONFLICT (user_id) DO UPDATE SET last_pos = users.last_pos WHERE false
