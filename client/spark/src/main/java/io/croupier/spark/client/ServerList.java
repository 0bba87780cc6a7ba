package io.croupier.spark.client;

import java.util.ArrayList;
import java.util.LinkedHashSet;
import java.util.List;

/** Parses {@code host:port[,host:port...]}. */
public final class ServerList {
  private ServerList() {}

  public static List<String> parse(String value) {
    if (value == null || value.trim().isEmpty()) {
      throw new IllegalArgumentException(
          "spark.croupier.servers is not set: give the Croupier servers as host:port[,host:port...]");
    }
    LinkedHashSet<String> out = new LinkedHashSet<>();
    for (String part : value.split(",")) {
      String s = part.trim();
      if (s.isEmpty()) {
        continue;
      }
      int colon = s.lastIndexOf(':');
      if (colon <= 0 || colon == s.length() - 1) {
        throw new IllegalArgumentException("spark.croupier.servers: '" + s + "' is not host:port");
      }
      int port;
      try {
        port = Integer.parseInt(s.substring(colon + 1));
      } catch (NumberFormatException e) {
        throw new IllegalArgumentException("spark.croupier.servers: bad port in '" + s + "'");
      }
      if (port <= 0 || port > 65535) {
        throw new IllegalArgumentException("spark.croupier.servers: port out of range in '" + s + "'");
      }
      out.add(s);
    }
    if (out.isEmpty()) {
      throw new IllegalArgumentException("spark.croupier.servers is empty");
    }
    return new ArrayList<>(out);
  }

  public static String host(String server) {
    String h = server.substring(0, server.lastIndexOf(':'));
    if (h.startsWith("[") && h.endsWith("]")) {
      h = h.substring(1, h.length() - 1);
    }
    return h;
  }

  public static int port(String server) {
    return Integer.parseInt(server.substring(server.lastIndexOf(':') + 1));
  }
}
