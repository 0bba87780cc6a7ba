package io.croupier.spark.client;

/** Turns an arbitrary application id into one the server accepts: [A-Za-z0-9._-]{1,128}, not "." or "..". */
public final class AppIds {
  private AppIds() {}

  public static String sanitize(String raw) {
    if (raw == null || raw.isEmpty()) {
      raw = "spark-app";
    }
    StringBuilder sb = new StringBuilder(Math.min(raw.length(), 128));
    for (int i = 0; i < raw.length() && sb.length() < 128; i++) {
      char c = raw.charAt(i);
      boolean ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
          || c == '.' || c == '_' || c == '-';
      sb.append(ok ? c : '-');
    }
    String s = sb.toString();
    if (s.equals(".") || s.equals("..")) {
      s = s.replace('.', '-');
    }
    return s;
  }
}
