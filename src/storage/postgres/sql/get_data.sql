SELECT value FROM member_data WHERE user_id = $1::text AND client_id = $2::text AND key = $3::text
