select $1::bigint, $2::bigint
