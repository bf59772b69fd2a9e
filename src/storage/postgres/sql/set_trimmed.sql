UPDATE users SET trimmed_to = $2::bigint WHERE user_id = $1::text
