//! Classifier micro-benchmark: µs per statement for parse + facts + read-only verdict,
//! and the cost of a grant's DBA rules on the same facts (0, 10, 100 rules).
//!
//! `cargo run --release --example classify` (see bench/README.md). Prints one line per
//! statement shape; figures go in README.md's performance section.

use std::time::Instant;

use sqlgate::catalog::FunctionCatalog;
use sqlgate::policy::readonly::{decide, Verdict};
use sqlgate::sql::postgres::classify;

const CORPUS: &[(&str, &str)] = &[
    ("pgbench -S", "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;"),
    ("pgbench -S prepared", "SELECT abalance FROM pgbench_accounts WHERE aid = $1"),
    (
        "join + aggregate",
        "SELECT c.name, count(*), sum(o.total) FROM customers c JOIN orders o ON o.customer_id = c.id \
         WHERE o.created_at > now() - interval '7 days' GROUP BY c.name ORDER BY 3 DESC LIMIT 20",
    ),
    (
        "CTE + window",
        "WITH r AS (SELECT id, rank() OVER (PARTITION BY region ORDER BY revenue DESC) k FROM sales) \
         SELECT * FROM r WHERE k <= 3",
    ),
    ("driver SET", "SET extra_float_digits = 3"),
    ("denied write", "UPDATE pgbench_accounts SET abalance = 0 WHERE aid = 1"),
];

fn main() {
    // The gateway's runtime threads have 16 MiB stacks; measure on one like them.
    std::thread::Builder::new()
        .stack_size(16 << 20)
        .spawn(run)
        .expect("thread")
        .join()
        .expect("benchmark");
}

fn run() {
    let row =
        |s: &str, n: &str, v: &str| [s.to_string(), n.to_string(), v.to_string(), "f".to_string()];
    let catalog = FunctionCatalog::from_rows([
        row("pg_catalog", "now", "s"),
        row("pg_catalog", "count", "i"),
        row("pg_catalog", "sum", "i"),
        row("pg_catalog", "rank", "i"),
    ]);
    let iterations = 20_000;
    println!("{:<22} {:>10} {:>10}", "statement", "µs/stmt", "verdict");
    for (name, sql) in CORPUS {
        let mut verdict = Verdict::Allow;
        // Warm up, then time.
        for _ in 0..1000 {
            let _ = classify(sql, 1 << 20);
        }
        let start = Instant::now();
        for _ in 0..iterations {
            let facts = classify(sql, 1 << 20).expect("corpus parses");
            verdict = decide(&facts[0], Some(&catalog));
        }
        let micros = start.elapsed().as_secs_f64() * 1e6 / iterations as f64;
        let verdict = match verdict {
            Verdict::Allow => "allow",
            Verdict::Deny { .. } => "deny",
        };
        println!("{name:<22} {micros:>10.2} {verdict:>10}");
    }
    // What a repeated SELECT with new constants costs in a session: the shape-cache
    // lookup (pg_query::normalize, then a hash map probe) instead of a full parse.
    let sql = CORPUS[0].1;
    let start = Instant::now();
    for _ in 0..iterations {
        let shape = pg_query::normalize(sql).expect("corpus normalizes");
        std::hint::black_box(shape);
    }
    let micros = start.elapsed().as_secs_f64() * 1e6 / iterations as f64;
    println!(
        "{:<22} {micros:>10.2} {:>10}",
        "pgbench -S shape hit", "allow"
    );
    // DBA rules on the facts of the join (five names): each rule denies three functions
    // three tables and three columns the statement does not name, so every rule is checked.
    let facts = classify(CORPUS[2].1, 1 << 20).expect("corpus parses");
    for n in [0usize, 10, 100] {
        let name = |i: usize, what: &str| sqlgate::policy::rules::Name {
            schema: Some("app".into()),
            name: format!("{what}_{i}"),
        };
        let set = sqlgate::policy::rules::RuleSet {
            limits: Default::default(),
            rules: (0..n)
                .map(|i| sqlgate::policy::rules::Rule {
                    id: format!("rule-{i}"),
                    message: "not for agents".into(),
                    file: "bench.toml".into(),
                    deny_functions: (0..3).map(|k| name(i * 3 + k, "f")).collect(),
                    deny_tables: (0..3).map(|k| name(i * 3 + k, "t")).collect(),
                    allow_tables: vec![],
                    allow_functions: vec![],
                    effect: Default::default(),
                    require: None,
                    deny_columns: (0..3)
                        .map(|k| sqlgate::policy::rules::ColumnName {
                            table: name(i * 3 + k, "t"),
                            column: "secret".into(),
                        })
                        .collect(),
                })
                .collect(),
        };
        let start = Instant::now();
        for _ in 0..iterations {
            std::hint::black_box(set.check(&facts[0], None));
        }
        let micros = start.elapsed().as_secs_f64() * 1e6 / iterations as f64;
        println!(
            "{:<22} {micros:>10.2} {:>10}",
            format!("rules: {n}"),
            "allow"
        );
    }
}
