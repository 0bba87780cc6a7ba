package io.croupier.spark.client;

/**
 * Layout of the payload of every block the plugin pushes (opaque to the server).
 *
 * <p>Byte 0 is a flag, the rest is a fragment of a serialized stream (Spark serializer, wrapped by
 * Spark's compression/encryption). Each logical stream holds the records of one map attempt for one
 * partition and is deserializable on its own, so no serializer needs to support relocation
 * (concatenation of streams). A stream normally fits one block ({@link #FINAL}); a stream whose
 * records are bigger than the maximum block size is cut into several blocks, all but the last flagged
 * {@link #CONTINUED}. Blocks of one (partition, map attempt) come back from Fetch in seq order, so the
 * reader re-joins the fragments.
 */
public final class BlockFormat {
  private BlockFormat() {}

  /** The logical stream ends with this block. */
  public static final byte FINAL = 0;
  /** The logical stream goes on in the next block (seq + 1) of the same partition and map attempt. */
  public static final byte CONTINUED = 1;
  /** Bytes of framing at the start of each block. */
  public static final int HEADER_BYTES = 1;
}
