//! Reservations under concurrency (issue 11): 32 connections (24 straight to SQL, 8 over HTTP)
//! reserve, settle, release, consume and abandon holds for limited users of a prepaid and a
//! postpaid organization with tight wallets and quotas, with operation ids duplicated across
//! connections. Throughout: no wallet below zero and no hold past its balance, a prepaid quota
//! never below zero, a postpaid used_quota never past quota + overdraft_limit. At the end: every
//! reservation ended exactly once (one end row in each ledger), the abandoned ones expired by the
//! background worker, no credit held anywhere, balances equal to what the ends charged, replays
//! identical, and `quota.verify()` clean.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pg_quota_e2e::*;

const WORKERS_SQL: usize = 24;
const WORKERS_HTTP: usize = 8;
const STEPS_PER_WORKER: usize = 50;
const USERS_PER_ORG: usize = 3;
/// Operation keys per user: 32 workers x 50 steps draw from 6 x 60 keys, so most keys are used
/// by several workers, some at the same moment.
const KEYS_PER_USER: u64 = 60;
const USER_CREDITS: i64 = 1500;
const PREPAID_QUOTA: i64 = 4000;
const POSTPAID_QUOTA: i64 = 2500;
const POSTPAID_OVERDRAFT: i64 = 1000;
/// Holds the test settles or releases live long enough to be ended by it; abandoned ones expire.
const TTL_S_KEPT: i32 = 300;
const TTL_S_ABANDONED: i32 = 1;
const EXPIRY_WAIT: Duration = Duration::from_secs(30);

/// xorshift64*: deterministic given the seed, printed on failure.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Action {
    Abandon,
    Release,
    SettleBelow,
    SettleAbove,
    Consume,
}

/// Everything about a key is a function of it, so two workers with one key send the same call.
#[derive(Clone, Debug)]
struct Step {
    user: usize,
    action: Action,
    credits: i64,
    actual: i64,
    ttl_s: i32,
    operation_id: String,
    end_operation_id: String,
}

fn step(prefix: &str, user: usize, key: u64) -> Step {
    let action = match key % 5 {
        0 => Action::Abandon,
        1 => Action::Release,
        2 => Action::SettleBelow,
        3 => Action::SettleAbove,
        _ => Action::Consume,
    };
    let credits = 40 + ((key * 37) % 160) as i64;
    let actual = match action {
        Action::SettleBelow => credits / 2,
        Action::SettleAbove => credits * 2,
        _ => credits,
    };
    let operation_id = format!("{prefix}_u{user}_k{key}");
    Step {
        user,
        action,
        credits,
        actual,
        ttl_s: if action == Action::Abandon {
            TTL_S_ABANDONED
        } else {
            TTL_S_KEPT
        },
        end_operation_id: format!("{operation_id}_end"),
        operation_id,
    }
}

/// A call's outcome: its answer, or the quota's refusal (its error code).
#[derive(Debug)]
enum Answer {
    Done(Value),
    Refused(String),
}

/// The two ways in: a SQL session of its own, or the sidecar.
enum Channel {
    Sql(tokio_postgres::Client),
    Http(Api),
}

const SQL_RESERVE: &str =
    "SELECT to_jsonb(r) FROM quota.reserve($1::text, $2::text, $3::int8, NULL::float8, $4::int4) r";
const SQL_SETTLE: &str = "SELECT to_jsonb(r) FROM quota.settle($1::int8, $2::int8, $3::text) r";
const SQL_RELEASE: &str = "SELECT to_jsonb(r) FROM quota.release($1::int8, $2::text) r";
const SQL_CONSUME: &str =
    "SELECT to_jsonb(r) FROM quota.consume($1::text, $2::text, $3::int8, NULL::float8) r";

/// The `error` code of an error's DETAIL.
fn detail_error(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .and_then(|d| d.detail())
        .and_then(|d| serde_json::from_str::<Value>(d).ok())
        .and_then(|d| d["error"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

impl Channel {
    async fn sql(
        db: &tokio_postgres::Client,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Answer {
        let mut retries = 0;
        loop {
            match db.query_one(sql, params).await {
                Ok(row) => return Answer::Done(row.get(0)),
                Err(e) => match (sqlstate(&e).as_str(), detail_error(&e).as_str()) {
                    ("23514", code @ ("insufficient_user_quota" | "insufficient_org_quota")) => {
                        return Answer::Refused(code.to_owned())
                    }
                    // The same operation_id in flight on another connection: retry to replay.
                    ("40001", _) if retries < 200 => {
                        retries += 1;
                        tokio::time::sleep(Duration::from_millis(2 + retries % 7)).await;
                    }
                    _ => panic!("{sql} {params:?}: unexpected error {e:?}"),
                },
            }
        }
    }

    async fn http(api: &Api, method: Method, path: &str, body: Value) -> Answer {
        let mut retries = 0;
        loop {
            let resp = api.service(method.clone(), path).json(&body).send().await;
            match (resp.status, resp.body["error"].as_str()) {
                (200 | 201, _) => return Answer::Done(resp.body),
                (403, Some(code @ ("insufficient_user_quota" | "insufficient_org_quota"))) => {
                    return Answer::Refused(code.to_owned())
                }
                // The sidecar retried 40001 a few times; keep retrying.
                (409, Some("in_progress")) if retries < 100 => {
                    retries += 1;
                    tokio::time::sleep(Duration::from_millis(5 + retries % 11)).await;
                }
                _ => panic!(
                    "{}: unexpected answer {} {}",
                    resp.what, resp.status, resp.text
                ),
            }
        }
    }

    async fn reserve(&self, user_id: &str, s: &Step) -> Answer {
        match self {
            Channel::Sql(db) => {
                Self::sql(
                    db,
                    SQL_RESERVE,
                    &[&s.operation_id, &user_id, &s.credits, &s.ttl_s],
                )
                .await
            }
            Channel::Http(api) => {
                Self::http(
                    api,
                    Method::POST,
                    "/api/internal/reservations",
                    json!({"operation_id": s.operation_id, "user_id": user_id,
                           "credits": s.credits, "ttl_s": s.ttl_s}),
                )
                .await
            }
        }
    }

    async fn settle(&self, reservation_id: i64, s: &Step) -> Answer {
        match self {
            Channel::Sql(db) => {
                Self::sql(
                    db,
                    SQL_SETTLE,
                    &[&reservation_id, &s.actual, &s.end_operation_id],
                )
                .await
            }
            Channel::Http(api) => {
                Self::http(
                    api,
                    Method::POST,
                    &format!("/api/internal/reservations/{reservation_id}/settle"),
                    json!({"actual_credits": s.actual, "operation_id": s.end_operation_id}),
                )
                .await
            }
        }
    }

    async fn release(&self, reservation_id: i64, s: &Step) -> Answer {
        match self {
            Channel::Sql(db) => {
                Self::sql(db, SQL_RELEASE, &[&reservation_id, &s.end_operation_id]).await
            }
            Channel::Http(api) => {
                Self::http(
                    api,
                    Method::POST,
                    &format!("/api/internal/reservations/{reservation_id}/release"),
                    json!({"operation_id": s.end_operation_id}),
                )
                .await
            }
        }
    }

    async fn consume(&self, user_id: &str, s: &Step) -> Answer {
        match self {
            Channel::Sql(db) => {
                Self::sql(db, SQL_CONSUME, &[&s.operation_id, &user_id, &s.credits]).await
            }
            Channel::Http(api) => Self::http(
                api,
                Method::POST,
                "/api/internal/consume",
                json!({"operation_id": s.operation_id, "user_id": user_id, "credits": s.credits}),
            )
            .await,
        }
    }
}

/// What one worker saw: answers by operation id (the reserve's, the end's, the consume's).
type Seen = Vec<(String, Value)>;

async fn run_worker(channel: Channel, users: Arc<Vec<String>>, steps: Vec<Step>) -> (Seen, usize) {
    let mut seen = Seen::new();
    let mut refused = 0;
    for s in steps {
        let user_id = &users[s.user];
        if s.action == Action::Consume {
            match channel.consume(user_id, &s).await {
                Answer::Done(v) => seen.push((s.operation_id.clone(), v)),
                Answer::Refused(_) => refused += 1,
            }
            continue;
        }
        let hold = match channel.reserve(user_id, &s).await {
            Answer::Done(v) => v,
            Answer::Refused(_) => {
                refused += 1;
                continue;
            }
        };
        let reservation_id = int(&hold, "reservation_id");
        seen.push((s.operation_id.clone(), hold));
        let end = match s.action {
            Action::Abandon => continue,
            Action::Release => channel.release(reservation_id, &s).await,
            _ => channel.settle(reservation_id, &s).await,
        };
        match end {
            Answer::Done(v) => seen.push((s.end_operation_id.clone(), v)),
            Answer::Refused(code) => panic!("{s:?}: an end is never refused, got {code}"),
        }
    }
    (seen, refused)
}

/// The invariants that must hold at every moment, read in one snapshot.
async fn check_bounds(
    db: &tokio_postgres::Client,
    users: &[String],
    prepaid: &str,
    postpaid: &str,
) {
    let row = db
        .query_one(
            "SELECT
                (SELECT min(balance) FROM quota.wallets WHERE user_id = ANY($1)),
                (SELECT count(*) FROM quota.wallets
                  WHERE user_id = ANY($1) AND (held_credits > balance OR held_credits < 0)),
                (SELECT quota FROM quota.organizations WHERE id = $2),
                (SELECT quota - held_quota FROM quota.organizations WHERE id = $2),
                (SELECT quota + overdraft_limit - used_quota FROM quota.organizations WHERE id = $3),
                (SELECT quota + overdraft_limit - used_quota - held_quota
                   FROM quota.organizations WHERE id = $3)",
            &[&users, &prepaid, &postpaid],
        )
        .await
        .expect("bounds probe");
    let min_balance: i64 = row.get(0);
    let over_held: i64 = row.get(1);
    let prepaid_quota: i64 = row.get(2);
    let prepaid_free: i64 = row.get(3);
    let postpaid_room: i64 = row.get(4);
    let postpaid_free: i64 = row.get(5);
    assert!(min_balance >= 0, "a wallet below zero: {min_balance}");
    assert_eq!(over_held, 0, "a wallet holds more than its balance");
    assert!(
        prepaid_quota >= 0,
        "prepaid quota below zero: {prepaid_quota}"
    );
    assert!(
        prepaid_free >= 0,
        "prepaid holds past its quota: {prepaid_free}"
    );
    assert!(
        postpaid_room >= 0,
        "postpaid used_quota past quota + overdraft_limit by {}",
        -postpaid_room
    );
    assert!(
        postpaid_free >= 0,
        "postpaid holds past its room: {postpaid_free}"
    );
}

/// Drops the timestamps, which each session renders in its own time zone.
fn comparable(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(map) = v.as_object_mut() {
        map.remove("created_at");
        map.remove("expires_at");
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reservations_end_exactly_once_within_bounds() {
    let ctx = Ctx::new("rsv_conc").await;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("reservations_concurrency seed {seed}");
    let mut rng = Rng(seed);

    let prepaid = ctx.create_org(json!({"quota": PREPAID_QUOTA})).await;
    let postpaid = ctx
        .create_org(json!({"quota": POSTPAID_QUOTA, "billing_type": "postpaid",
                           "overdraft_limit": POSTPAID_OVERDRAFT}))
        .await;
    let mut users = vec![];
    for org in [&prepaid, &postpaid] {
        for _ in 0..USERS_PER_ORG {
            let user = ctx
                .create_user_with(Some(org), json!({"unlimited": false}))
                .await;
            let user_id = user["id"].as_str().unwrap().to_string();
            ctx.top_up_credits(&user_id, USER_CREDITS).await;
            users.push(user_id);
        }
    }
    let users = Arc::new(users);
    let prefix = ctx.id("op");
    let mut plans: Vec<Vec<Step>> = (0..WORKERS_SQL + WORKERS_HTTP)
        .map(|_| {
            (0..STEPS_PER_WORKER)
                .map(|_| {
                    let user = rng.below(users.len() as u64) as usize;
                    step(&prefix, user, rng.below(KEYS_PER_USER))
                })
                .collect()
        })
        .collect();
    // The same key at the same position on two connections: in flight at the same moment.
    for i in 0..STEPS_PER_WORKER {
        let from = rng.below(plans.len() as u64) as usize;
        let to = rng.below(plans.len() as u64) as usize;
        plans[to][i] = plans[from][i].clone();
    }

    // Watch the bounds while the workers run.
    let stop = Arc::new(AtomicBool::new(false));
    let monitor = {
        let (stop, users) = (stop.clone(), users.clone());
        let (prepaid, postpaid) = (prepaid.clone(), postpaid.clone());
        tokio::spawn(async move {
            let db = connect_db().await;
            let mut probes = 0;
            while !stop.load(Ordering::Relaxed) {
                check_bounds(&db, &users, &prepaid, &postpaid).await;
                probes += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            probes
        })
    };

    let mut tasks = tokio::task::JoinSet::new();
    for (n, plan) in plans.into_iter().enumerate() {
        let users = users.clone();
        tasks.spawn(async move {
            let channel = if n < WORKERS_SQL {
                Channel::Sql(connect_db().await)
            } else {
                Channel::Http(Api::new())
            };
            run_worker(channel, users, plan).await
        });
    }
    let mut answers: HashMap<String, Vec<Value>> = HashMap::new();
    let mut refused = 0;
    while let Some(done) = tasks.join_next().await {
        let (seen, r) = done.expect("a worker panicked");
        refused += r;
        for (operation_id, answer) in seen {
            answers.entry(operation_id).or_default().push(answer);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let probes = monitor.await.expect("the bounds monitor panicked");
    eprintln!(
        "{} operation ids answered, {refused} refusals, {probes} bound probes",
        answers.len()
    );
    assert!(
        refused > 0,
        "the balances were meant to be tight: nothing was refused"
    );
    assert!(probes > 0, "the bounds were never probed during the run");

    let replayed = answers.values().filter(|list| list.len() > 1).count();
    assert!(replayed > 0, "no operation id was used twice");
    // Every replay answered what the first call answered, field for field.
    for (operation_id, list) in &answers {
        for other in &list[1..] {
            assert_eq!(
                comparable(other),
                comparable(&list[0]),
                "replay of {operation_id} differs"
            );
        }
    }

    // The abandoned holds: the background worker expires them.
    let start = Instant::now();
    loop {
        let held: i64 = ctx
            .db
            .query_one(
                "SELECT count(*) FROM quota.reservations WHERE user_id = ANY($1) AND status = 'held'",
                &[&*users],
            )
            .await
            .unwrap()
            .get(0);
        if held == 0 {
            break;
        }
        assert!(
            start.elapsed() < EXPIRY_WAIT,
            "{held} holds still open after {EXPIRY_WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    check_bounds(&ctx.db, &users, &prepaid, &postpaid).await;

    // Each reservation ended exactly once, the way its key says.
    let rows = ctx
        .db
        .query(
            "SELECT reservation_id, operation_id, status, coalesce(charged_credits, 0),
                    coalesce(org_charged_credits, 0), org
             FROM quota.reservations WHERE user_id = ANY($1)",
            &[&*users],
        )
        .await
        .unwrap();
    assert!(!rows.is_empty());
    let mut operation_ids = HashSet::new();
    let mut expired = 0;
    let mut org_charged: HashMap<String, i64> = HashMap::new();
    for row in &rows {
        let reservation_id: i64 = row.get(0);
        let operation_id: String = row.get(1);
        let status: String = row.get(2);
        let org: String = row.get(5);
        assert!(
            operation_ids.insert(operation_id.clone()),
            "two reservations for {operation_id}"
        );
        let key: u64 = operation_id
            .rsplit("_k")
            .next()
            .and_then(|k| k.parse().ok())
            .unwrap_or_else(|| panic!("key of {operation_id}"));
        let wanted = match step(&prefix, 0, key).action {
            Action::Abandon => "expired",
            Action::Release => "released",
            _ => "settled",
        };
        assert_eq!(
            status, wanted,
            "reservation {reservation_id} ({operation_id})"
        );
        if status == "expired" {
            expired += 1;
        }
        assert_eq!(
            reservation_ends(&ctx.db, reservation_id).await,
            (1, 1),
            "ends of reservation {reservation_id} ({operation_id}, {status})"
        );
        *org_charged.entry(org).or_default() += row.get::<_, i64>(4);
    }
    assert!(expired > 0, "no abandoned hold was expired");
    // Every answered reserve or consume is one of them.
    for operation_id in answers.keys() {
        if !operation_id.ends_with("_end") {
            assert!(
                operation_ids.contains(operation_id),
                "{operation_id} has no reservation"
            );
        }
    }

    // Nothing held; the wallets and organizations hold exactly what the ends charged.
    let wallets = ctx
        .db
        .query(
            "SELECT w.user_id, w.balance, w.held_credits,
                    (SELECT coalesce(sum(charged_credits), 0)::int8 FROM quota.reservations r
                      WHERE r.user_id = w.user_id)
             FROM quota.wallets w WHERE w.user_id = ANY($1)",
            &[&*users],
        )
        .await
        .unwrap();
    for w in &wallets {
        let (user_id, balance, held, charged): (String, i64, i64, i64) =
            (w.get(0), w.get(1), w.get(2), w.get(3));
        assert_eq!(held, 0, "{user_id} still holds credits");
        assert_eq!(balance, USER_CREDITS - charged, "{user_id}");
        assert!(balance >= 0);
    }
    let pre = ctx.org(&prepaid).await;
    assert_eq!(int(&pre, "held_quota"), 0, "{pre}");
    assert_eq!(int(&pre, "open_reservations"), 0, "{pre}");
    assert_eq!(
        int(&pre, "quota"),
        PREPAID_QUOTA - org_charged[&prepaid],
        "{pre}"
    );
    let post = ctx.org(&postpaid).await;
    assert_eq!(int(&post, "held_quota"), 0, "{post}");
    assert_eq!(int(&post, "used_quota"), org_charged[&postpaid], "{post}");
    assert!(int(&post, "used_quota") <= POSTPAID_QUOTA + POSTPAID_OVERDRAFT);
    ctx.assert_verify_clean().await;
}
