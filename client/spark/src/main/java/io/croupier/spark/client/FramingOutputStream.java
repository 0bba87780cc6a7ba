package io.croupier.spark.client;

import java.io.IOException;
import java.io.OutputStream;
import java.util.Arrays;

/**
 * Sink of one logical serialized stream: cuts it into blocks of at most {@code maxBlockBytes}
 * (header included) and hands each block to a {@link BlockConsumer}. {@link #close()} emits the last
 * block, flagged {@link BlockFormat#FINAL}. Not thread-safe.
 */
public final class FramingOutputStream extends OutputStream {
  /** Receives a finished block. {@code data[0]} is the flag byte; the array is owned by the callee. */
  public interface BlockConsumer {
    void accept(byte[] data, int length) throws IOException;
  }

  private static final int INITIAL_CAPACITY = 4096;

  private final BlockConsumer consumer;
  private final int maxBlockBytes;
  private byte[] buf;
  private int len;
  private long streamBytes;
  private boolean closed;

  private final int expected;

  public FramingOutputStream(BlockConsumer consumer, int maxBlockBytes) {
    this(consumer, maxBlockBytes, 0);
  }

  /**
   * @param expectedBytes expected size of the stream (header included): a buffer that outgrows its small
   *     initial size jumps straight to this size, which saves the copies of growing it step by step
   */
  public FramingOutputStream(BlockConsumer consumer, int maxBlockBytes, int expectedBytes) {
    if (maxBlockBytes < BlockFormat.HEADER_BYTES + 1) {
      throw new IllegalArgumentException("maxBlockBytes too small: " + maxBlockBytes);
    }
    this.consumer = consumer;
    this.maxBlockBytes = maxBlockBytes;
    this.expected = Math.max(BlockFormat.HEADER_BYTES + 1, Math.min(expectedBytes, maxBlockBytes));
    newBuffer();
  }

  private void newBuffer() {
    buf = new byte[Math.min(INITIAL_CAPACITY, maxBlockBytes)];
    len = BlockFormat.HEADER_BYTES;
  }

  /** Payload bytes written to this logical stream so far. */
  public long streamBytes() {
    return streamBytes;
  }

  @Override
  public void write(int b) throws IOException {
    ensureOpen();
    if (len == maxBlockBytes) {
      emit(BlockFormat.CONTINUED);
    }
    if (len == buf.length) {
      grow(len + 1);
    }
    buf[len++] = (byte) b;
    streamBytes++;
  }

  @Override
  public void write(byte[] b, int off, int n) throws IOException {
    ensureOpen();
    if (off < 0 || n < 0 || off + n > b.length) {
      throw new IndexOutOfBoundsException();
    }
    while (n > 0) {
      if (len == maxBlockBytes) {
        emit(BlockFormat.CONTINUED);
      }
      int room = maxBlockBytes - len;
      int take = Math.min(room, n);
      if (len + take > buf.length) {
        grow(len + take);
      }
      System.arraycopy(b, off, buf, len, take);
      len += take;
      off += take;
      n -= take;
      streamBytes += take;
    }
  }

  private void grow(int min) {
    long cap = Math.max(buf.length * 2L, expected);
    while (cap < min) {
      cap = cap * 2;
    }
    buf = Arrays.copyOf(buf, (int) Math.min(cap, maxBlockBytes));
  }

  private void emit(byte flag) throws IOException {
    buf[0] = flag;
    byte[] out = buf;
    // Do not pin a mostly empty array while the block waits for its ack.
    if (len < out.length / 2) {
      out = Arrays.copyOf(buf, len);
    }
    int n = len;
    newBuffer();
    consumer.accept(out, n);
  }

  private void ensureOpen() throws IOException {
    if (closed) {
      throw new IOException("stream closed");
    }
  }

  @Override
  public void flush() {}

  @Override
  public void close() throws IOException {
    if (!closed) {
      closed = true;
      emit(BlockFormat.FINAL);
      buf = null;
    }
  }
}
