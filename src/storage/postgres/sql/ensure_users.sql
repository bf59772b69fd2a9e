INSERT INTO users (user_id) SELECT DISTINCT u FROM unnest($1::text[]) AS u ORDER BY u
ON CONFLICT (user_id) DO NOTHING
