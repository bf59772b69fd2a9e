-- Every notification of a transaction in one statement: channel and payload, pairwise.
SELECT pg_notify(c, p) FROM unnest($1::text[], $2::text[]) AS t(c, p)
