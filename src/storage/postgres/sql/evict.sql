DELETE FROM messages WHERE user_id = $1::text AND pos = $2::bigint
