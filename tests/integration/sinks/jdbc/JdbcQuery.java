// An unmodified ClickHouse JDBC driver running queries, for tests/integration/sinks/test_access_clients.py.
// java -cp 'LIB/*' JdbcQuery.java URL USER PASSWORD SQL...: each result row as tab-separated values,
// "ERROR <message>" for a statement that fails (the run goes on), exit 0.
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.Properties;

public class JdbcQuery {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.setProperty("user", args[1]);
        props.setProperty("password", args[2]);
        try (Connection conn = DriverManager.getConnection(args[0], props)) {
            for (int i = 3; i < args.length; i++) {
                System.out.println("QUERY " + args[i]);
                try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery(args[i])) {
                    int n = rs.getMetaData().getColumnCount();
                    while (rs.next()) {
                        StringBuilder row = new StringBuilder();
                        for (int c = 1; c <= n; c++) {
                            if (c > 1) row.append('\t');
                            row.append(rs.getString(c));
                        }
                        System.out.println(row);
                    }
                } catch (SQLException e) {
                    System.out.println("ERROR " + String.valueOf(e.getMessage()).replace('\n', ' '));
                }
            }
        } catch (SQLException e) {
            System.out.println("ERROR " + String.valueOf(e.getMessage()).replace('\n', ' '));
        }
    }
}
