INSERT INTO interest (user_id, node, until)
SELECT DISTINCT u, $2::text, $3::bigint FROM unnest($1::text[]) AS u
ON CONFLICT (user_id, node) DO UPDATE SET until = greatest(interest.until, EXCLUDED.until)
