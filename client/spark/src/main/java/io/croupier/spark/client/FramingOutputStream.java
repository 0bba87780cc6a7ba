package io.croupier.spark.client;

import com.google.protobuf.ByteString;
import com.google.protobuf.UnsafeByteOperations;
import java.io.IOException;
import java.io.OutputStream;
import java.util.Arrays;

/**
 * Sink of one logical serialized stream: cuts it into blocks of at most {@code maxBlockBytes}
 * (header included) and hands each block to a {@link BlockConsumer}. {@link #close()} emits the last
 * block, flagged {@link BlockFormat#FINAL}. Not thread-safe.
 *
 * <p>A block is kept as a list of chunks of at most {@link #CHUNK_BYTES} and handed over as a rope
 * {@link ByteString} over them, never copied into one array: a block is typically 0.5-4 MiB, and arrays
 * that big are "humongous" objects for G1 (at least half a heap region, i.e. 512 KiB and up), allocated
 * straight in the old generation. One such array per block made the executors run several times more
 * garbage collections (and a concurrent marking cycle per few blocks); 64 KiB chunks are ordinary
 * young-generation garbage once the block is acknowledged.
 */
public final class FramingOutputStream extends OutputStream {
  /** Receives a finished block. Its first byte is the flag byte; the bytes are owned by the callee. */
  public interface BlockConsumer {
    void accept(ByteString block) throws IOException;
  }

  /** Largest chunk: well below half of G1's smallest region (1 MiB), so never a humongous object. */
  static final int CHUNK_BYTES = 64 << 10;
  private static final int FIRST_CHUNK_BYTES = 4096;

  private final BlockConsumer consumer;
  private final int maxBlockBytes;
  private byte[][] chunks = new byte[8][];
  private int full; // chunks[0 .. full) are full, chunks[full] is being filled
  private byte[] cur;
  private int pos; // bytes used in cur
  private int len; // bytes in this block, header included
  private long streamBytes;
  private boolean closed;

  public FramingOutputStream(BlockConsumer consumer, int maxBlockBytes) {
    if (maxBlockBytes < BlockFormat.HEADER_BYTES + 1) {
      throw new IllegalArgumentException("maxBlockBytes too small: " + maxBlockBytes);
    }
    this.consumer = consumer;
    this.maxBlockBytes = maxBlockBytes;
    newBlock();
  }

  private void newBlock() {
    Arrays.fill(chunks, 0, full + 1, null);
    full = 0;
    cur = new byte[Math.min(FIRST_CHUNK_BYTES, maxBlockBytes)];
    chunks[0] = cur;
    pos = BlockFormat.HEADER_BYTES;
    len = BlockFormat.HEADER_BYTES;
  }

  /** Makes room in {@code cur} (the current chunk is full): a new chunk, growing up to CHUNK_BYTES. */
  private void nextChunk() {
    int size = Math.min(CHUNK_BYTES, Math.max(cur.length * 4, FIRST_CHUNK_BYTES));
    size = Math.min(size, maxBlockBytes - len); // never allocate past the block limit
    full++;
    if (full == chunks.length) {
      chunks = Arrays.copyOf(chunks, chunks.length * 2);
    }
    cur = new byte[size];
    chunks[full] = cur;
    pos = 0;
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
    if (pos == cur.length) {
      nextChunk();
    }
    cur[pos++] = (byte) b;
    len++;
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
      if (pos == cur.length) {
        nextChunk();
      }
      int take = Math.min(Math.min(cur.length - pos, maxBlockBytes - len), n);
      System.arraycopy(b, off, cur, pos, take);
      pos += take;
      len += take;
      off += take;
      n -= take;
      streamBytes += take;
    }
  }

  private void emit(byte flag) throws IOException {
    chunks[0][0] = flag;
    ByteString block = null;
    for (int i = 0; i <= full; i++) {
      byte[] c = chunks[i];
      int used = i == full ? pos : c.length;
      ByteString part;
      if (i == full && used < c.length / 2) {
        part = ByteString.copyFrom(c, 0, used); // do not pin a mostly empty chunk until the ack
      } else {
        part = UnsafeByteOperations.unsafeWrap(c, 0, used);
      }
      block = block == null ? part : block.concat(part);
    }
    newBlock();
    consumer.accept(block);
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
      chunks = null;
      cur = null;
    }
  }
}
