package io.croupier.spark.client;

import io.grpc.Status;
import java.io.File;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Objects;
import javax.net.ssl.SSLException;

/**
 * The process-wide security settings of the client: the servers' auth token (sent as
 * {@code authorization: Bearer <token>} on every call) and the CA file that switches the channels to TLS.
 * Both come from the process's own SparkConf (driver and executors alike), never from the shuffle handle:
 * only the per-app, per-server secrets travel in the handle.
 */
public final class CroupierSecurity {
  public static final String TOKEN_FILE_KEY = "spark.croupier.auth.tokenFile";
  public static final String TOKEN_KEY = "spark.croupier.auth.token";
  public static final String CA_FILE_KEY = "spark.croupier.tls.caFile";

  /** No token, plaintext. */
  public static final CroupierSecurity NONE = new CroupierSecurity(null, null);

  private final String token;
  private final String caFile;

  private CroupierSecurity(String token, String caFile) {
    this.token = token;
    this.caFile = caFile;
  }

  /**
   * Validates and builds the settings. {@code token} is trimmed (null or blank: no token); {@code caFile}
   * (null or blank: plaintext) must be a readable file.
   */
  public static CroupierSecurity of(String token, String caFile) {
    String t = token == null ? null : token.trim();
    if (t != null && t.isEmpty()) {
      t = null;
    }
    if (t != null) {
      for (int i = 0; i < t.length(); i++) {
        char c = t.charAt(i);
        if (c < 0x21 || c > 0x7e) {
          throw new IllegalArgumentException("Croupier: the auth token may hold visible ASCII characters only");
        }
      }
    }
    String ca = caFile == null || caFile.trim().isEmpty() ? null : caFile.trim();
    if (ca != null && !new File(ca).canRead()) {
      throw new IllegalArgumentException(CA_FILE_KEY + "=" + ca + ": the CA file does not exist or is not readable");
    }
    if (t == null && ca == null) {
      return NONE;
    }
    return new CroupierSecurity(t, ca);
  }

  /**
   * From the configuration values: the token is read from {@code tokenFile} when given (surrounding
   * whitespace ignored, as the server does), else taken from {@code tokenValue}.
   */
  public static CroupierSecurity fromConf(String tokenFile, String tokenValue, String caFile) {
    String token = tokenValue;
    if (tokenFile != null && !tokenFile.trim().isEmpty()) {
      Path p = Path.of(tokenFile.trim());
      try {
        token = new String(Files.readAllBytes(p), StandardCharsets.UTF_8).trim();
      } catch (IOException e) {
        throw new IllegalArgumentException(TOKEN_FILE_KEY + "=" + p + ": cannot read the token file ("
            + e + "); it must be readable on the driver and on every executor", e);
      }
      if (token.isEmpty()) {
        throw new IllegalArgumentException(TOKEN_FILE_KEY + "=" + p + ": the token file is empty");
      }
    }
    return of(token, caFile);
  }

  public boolean hasToken() {
    return token != null;
  }

  /** {@code Bearer <token>}, or null without a token. */
  public String bearer() {
    return token == null ? null : "Bearer " + token;
  }

  public boolean tls() {
    return caFile != null;
  }

  /** The PEM file of the CA(s) to trust, or null (plaintext). */
  public String caFile() {
    return caFile;
  }

  @Override
  public boolean equals(Object o) {
    if (!(o instanceof CroupierSecurity)) {
      return false;
    }
    CroupierSecurity s = (CroupierSecurity) o;
    return Objects.equals(token, s.token) && Objects.equals(caFile, s.caFile);
  }

  @Override
  public int hashCode() {
    return Objects.hash(token, caFile);
  }

  /** Never shows the token. */
  @Override
  public String toString() {
    return "CroupierSecurity(token=" + (token != null ? "set" : "none") + ", tls="
        + (caFile != null ? "ca " + caFile : "off") + ")";
  }

  /**
   * {@code CODE: description}, plus a hint naming the configuration key to check when the failure is about
   * the token, the app secret or TLS.
   */
  public static String describe(Status st) {
    StringBuilder sb = new StringBuilder().append(st.getCode());
    if (st.getDescription() != null) {
      sb.append(": ").append(st.getDescription());
    }
    String hint = hint(st);
    if (hint != null) {
      sb.append(" (").append(hint).append(")");
    }
    return sb.toString();
  }

  static String hint(Status st) {
    String d = st.getDescription() == null ? "" : st.getDescription().toLowerCase(java.util.Locale.ROOT);
    switch (st.getCode()) {
      case UNAUTHENTICATED:
        if (d.contains("token") || d.contains("authorization")) {
          return "the server requires an auth token: set " + TOKEN_FILE_KEY + " (or " + TOKEN_KEY
              + ") to the server's token";
        }
        return null;
      case PERMISSION_DENIED:
        if (d.contains("secret")) {
          return "the app secret is not the one this server issued: another application may use the same app id "
              + "(spark.croupier.appId), or the server's secret key changed";
        }
        return null;
      case UNAVAILABLE:
        if (hasCause(st.getCause(), SSLException.class) || d.contains("ssl") || d.contains("certificate")) {
          String root = rootMessage(st.getCause());
          return "TLS handshake failed" + (root != null ? " (" + root + ")" : "") + ": " + CA_FILE_KEY + " must be the PEM of the CA that signed the server's "
              + "certificate, and the certificate must name the host of spark.croupier.servers";
        }
        boolean closedByPeer = d.contains("network closed for unknown reason")
            || (d.contains("io exception") && !hasCause(st.getCause(), java.net.ConnectException.class));
        if (closedByPeer && !CroupierClients.security().tls()) {
          // What a plaintext client sees from a TLS server: the server closes the connection, which
          // grpc-netty reports either way depending on timing (a reset shows as an I/O exception).
          return "if the server uses TLS (--tls-cert), set " + CA_FILE_KEY;
        }
        return null;
      default:
        return null;
    }
  }

  private static String rootMessage(Throwable t) {
    String msg = null;
    for (int i = 0; t != null && i < 20; i++, t = t.getCause()) {
      if (t.getMessage() != null) {
        msg = t.getMessage();
      }
    }
    return msg;
  }

  private static boolean hasCause(Throwable t, Class<? extends Throwable> type) {
    for (int i = 0; t != null && i < 20; i++, t = t.getCause()) {
      if (type.isInstance(t)) {
        return true;
      }
    }
    return false;
  }
}
