INSERT INTO users (user_id) VALUES ($1::text) ON CONFLICT (user_id) DO NOTHING
