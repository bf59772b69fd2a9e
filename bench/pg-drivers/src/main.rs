//! The choice of the PostgreSQL driver (docs/benchmarks.md, "Choosing the PostgreSQL driver"):
//! one prepared statement in a transaction (BEGIN; SELECT; COMMIT), per driver, on one connection.
use std::time::Instant;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let which = args.next().expect("tokio-postgres | sqlx");
    let url = args.next().expect("url");
    let n: usize = args.next().map_or(5000, |s| s.parse().unwrap());
    let sql = "SELECT $1::bigint + 1, $2::text";
    match which.as_str() {
        "tokio-postgres" => {
            let cfg: tokio_postgres::Config = url.parse().unwrap();
            let mgr = deadpool_postgres::Manager::new(cfg, tokio_postgres::NoTls);
            let pool = deadpool_postgres::Pool::builder(mgr)
                .max_size(1)
                .build()
                .unwrap();
            let run = |k: usize| {
                let pool = pool.clone();
                async move {
                    for i in 0..k {
                        let mut c = pool.get().await.unwrap();
                        let tx = c.transaction().await.unwrap();
                        let st = tx.prepare_cached(sql).await.unwrap();
                        let rows = tx.query(&st, &[&(i as i64), &"x"]).await.unwrap();
                        assert_eq!(rows.len(), 1);
                        tx.commit().await.unwrap();
                    }
                }
            };
            run(200).await;
            let t = Instant::now();
            run(n).await;
            println!(
                "tokio-postgres: {:.1} µs per transaction",
                t.elapsed().as_secs_f64() * 1e6 / n as f64
            );
        }
        "sqlx" => {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect(&url)
                .await
                .unwrap();
            let run = |k: usize| {
                let pool = pool.clone();
                async move {
                    for i in 0..k {
                        let mut tx = pool.begin().await.unwrap();
                        let rows = sqlx::query(sql)
                            .bind(i as i64)
                            .bind("x")
                            .fetch_all(&mut *tx)
                            .await
                            .unwrap();
                        assert_eq!(rows.len(), 1);
                        tx.commit().await.unwrap();
                    }
                }
            };
            run(200).await;
            let t = Instant::now();
            run(n).await;
            println!(
                "sqlx: {:.1} µs per transaction",
                t.elapsed().as_secs_f64() * 1e6 / n as f64
            );
        }
        _ => panic!("which driver?"),
    }
}
