#[pg_schema] mod tests {}
