package io.croupier.spark.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.util.List;
import org.junit.jupiter.api.Test;

class SmallPartsTest {
  @Test
  void appIdSanitized() {
    assertEquals("app-20261130002630-0000", AppIds.sanitize("app-20261130002630-0000"));
    assertEquals("local-1764-my-app-", AppIds.sanitize("local-1764/my app!"));
    assertEquals("-", AppIds.sanitize("."));
    assertEquals("--", AppIds.sanitize(".."));
    assertEquals(128, AppIds.sanitize("x".repeat(300)).length());
    assertEquals("spark-app", AppIds.sanitize(""));
  }

  @Test
  void serverListParsed() {
    assertEquals(List.of("127.0.0.1:1", "h:2"), ServerList.parse(" 127.0.0.1:1, h:2 ,127.0.0.1:1"));
    assertEquals("::1", ServerList.host("[::1]:5"));
    assertEquals(5, ServerList.port("[::1]:5"));
    assertThrows(IllegalArgumentException.class, () -> ServerList.parse(""));
    assertThrows(IllegalArgumentException.class, () -> ServerList.parse("host"));
    assertThrows(IllegalArgumentException.class, () -> ServerList.parse("host:0"));
    assertThrows(IllegalArgumentException.class, () -> ServerList.parse("host:x"));
  }
}
