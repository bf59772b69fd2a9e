SELECT ns, wm FROM watermarks WHERE user_id = $1::text
