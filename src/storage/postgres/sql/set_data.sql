INSERT INTO member_data (user_id, client_id, key, value) VALUES ($1::text, $2::text, $3::text, $4::text)
ON CONFLICT (user_id, client_id, key) DO UPDATE SET value = EXCLUDED.value
