SELECT min(pos) FROM messages WHERE user_id = $1::text AND client = $2::text AND client <> ''
