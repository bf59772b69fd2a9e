-- In user order, as every statement that locks several users' rows: two notes (an append's and
-- a delivery check's) never wait for each other in a circle (`sweep_interest.sql` skips the
-- rows a note holds).
INSERT INTO interest (user_id, node, until)
SELECT DISTINCT u, $2::text, $3::bigint FROM unnest($1::text[]) AS u ORDER BY u
ON CONFLICT (user_id, node) DO UPDATE SET until = greatest(interest.until, EXCLUDED.until)
