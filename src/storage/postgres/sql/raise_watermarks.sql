INSERT INTO watermarks (user_id, ns, wm) SELECT $1::text, ns, $3::bigint FROM unnest($2::text[]) AS ns
ON CONFLICT (user_id, ns) DO UPDATE SET wm = greatest(watermarks.wm, EXCLUDED.wm)
