package io.croupier.spark.client;

import java.io.IOException;

/** A fetch that cannot be trusted or completed: data missing, corrupt, or server unreachable. */
public final class FetchException extends IOException {
  private static final long serialVersionUID = 1L;
  private final int mapIndex;

  public FetchException(String message, int mapIndex, Throwable cause) {
    super(message, cause);
    this.mapIndex = mapIndex;
  }

  public FetchException(String message, int mapIndex) {
    this(message, mapIndex, null);
  }

  /** The map whose output is at fault, or -1 when it is not one map (e.g. the server is down). */
  public int mapIndex() {
    return mapIndex;
  }
}
