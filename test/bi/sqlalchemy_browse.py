"""Browse the generated views as Superset does (SQLAlchemy's inspector, then a
SELECT), logged in as an analyst over TCP; exits non-zero on any difference."""
import os
import sys

import sqlalchemy as sa
from sqlalchemy.exc import ProgrammingError

url = sa.engine.URL.create("postgresql+psycopg2", username="bi_reader", password="bi-reader-pw",
                           host="127.0.0.1", port=int(os.environ.get("PGPORT", "5432")),
                           database=sys.argv[1])
engine = sa.create_engine(url)
failures = []


def check(what, got, want):
    if got == want:
        print(f"ok - {what}")
    else:
        print(f"not ok - {what}: got {got!r}, want {want!r}")
        failures.append(what)


insp = sa.inspect(engine)
check("views in schema bi", sorted(insp.get_view_names(schema="bi")), ["events", "people"])
cols = insp.get_columns("people", schema="bi")
check("columns of bi.people", [(c["name"], str(c["type"])) for c in cols],
      [("profile_id", "BIGINT"), ("email", "TEXT"), ("age", "INTEGER"), ("score", "NUMERIC"),
       ("vip", "BOOLEAN"), ("signup", "TIMESTAMP")])
check("signup has a time zone", cols[-1]["type"].timezone, True)
check("columns of bi.events start like cdp.events_resolved",
      [c["name"] for c in insp.get_columns("events", schema="bi")][:6],
      ["message_id", "source", "type", "event", "name", "profile_id"])

people = sa.Table("people", sa.MetaData(), autoload_with=engine, schema="bi")
with engine.connect() as conn:
    rows = conn.execute(sa.select(people.c.email, people.c.age, people.c.score, people.c.vip,
                                  people.c.signup).order_by(people.c.profile_id)).fetchall()
    check("rows of bi.people (bob's values do not convert: NULL, no error)",
          [(r[0], r[1], None if r[2] is None else str(r[2]), r[3], None if r[4] is None else r[4].isoformat())
           for r in rows],
          [("ann@x.io", 41, "9.5", True, "2026-01-02T03:04:05+00:00"), (None, None, None, None, None)])
    events = sa.Table("events", sa.MetaData(), autoload_with=engine, schema="bi")
    check("events of bi.events", conn.execute(sa.select(sa.func.count()).select_from(events)).scalar(), 3)

for relation in ("cdp.profile_records", "cdp.inbox", "cdp.dead_letters", "cdp.events"):
    with engine.connect() as conn:
        try:
            conn.execute(sa.text(f"SELECT 1 FROM {relation}"))
            check(f"{relation} is refused", "readable", "42501")
        except ProgrammingError as e:
            check(f"{relation} is refused", e.orig.pgcode, "42501")

sys.exit(1 if failures else 0)
