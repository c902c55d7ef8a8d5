import java.sql.*;
import java.util.*;

/*
 * Browse the generated views as Metabase does (pgjdbc's DatabaseMetaData,
 * then a SELECT), logged in as an analyst over TCP; exits non-zero on any
 * difference.  Usage: java -cp postgresql.jar:. JdbcBrowse jdbc-url
 */
public class JdbcBrowse {
    static int failures = 0;

    static void check(String what, Object got, Object want) {
        if (Objects.equals(got, want)) {
            System.out.println("ok - " + what);
        } else {
            System.out.println("not ok - " + what + ": got " + got + ", want " + want);
            failures++;
        }
    }

    public static void main(String[] args) throws Exception {
        try (Connection c = DriverManager.getConnection(args[0], "bi_reader", "bi-reader-pw")) {
            DatabaseMetaData md = c.getMetaData();
            List<String> views = new ArrayList<>();
            try (ResultSet r = md.getTables(null, "bi", "%", new String[] {"VIEW"})) {
                while (r.next())
                    views.add(r.getString("TABLE_NAME"));
            }
            Collections.sort(views);
            check("views in schema bi", views, List.of("events", "people"));
            List<String> cols = new ArrayList<>();
            try (ResultSet r = md.getColumns(null, "bi", "people", "%")) {
                while (r.next())
                    cols.add(r.getString("COLUMN_NAME") + " " + r.getString("TYPE_NAME"));
            }
            check("columns of bi.people", cols,
                  List.of("profile_id int8", "email text", "age int4", "score numeric", "vip bool", "signup timestamptz"));
            List<String> rows = new ArrayList<>();
            try (Statement s = c.createStatement();
                 ResultSet r = s.executeQuery("SELECT * FROM bi.people ORDER BY profile_id")) {
                ResultSetMetaData rm = r.getMetaData();
                check("result columns", rm.getColumnCount(), 6);
                check("age is an integer column", rm.getColumnType(3), Types.INTEGER);
                while (r.next())
                    rows.add(r.getString("email") + "|" + r.getObject("age") + "|" + r.getBigDecimal("score") + "|"
                             + r.getObject("vip") + "|" + (r.getTimestamp("signup") == null ? null : r.getTimestamp("signup").toInstant()));
            }
            check("rows of bi.people (bob's values do not convert: NULL, no error)", rows,
                  List.of("ann@x.io|41|9.5|true|2026-01-02T03:04:05Z", "null|null|null|null|null"));
            for (String rel : List.of("cdp.profile_records", "cdp.inbox", "cdp.dead_letters", "cdp.events")) {
                String state = "readable";
                try (Statement s = c.createStatement()) {
                    s.executeQuery("SELECT 1 FROM " + rel).close();
                } catch (SQLException e) {
                    state = e.getSQLState();
                }
                check(rel + " is refused", state, "42501");
            }
        }
        System.exit(failures == 0 ? 0 : 1);
    }
}
