package io.croupier.spark;

import io.croupier.spark.client.AppIds;
import io.croupier.spark.client.ClientConf;
import io.croupier.spark.client.CroupierSecurity;
import io.croupier.spark.client.ServerList;
import java.util.List;
import org.apache.spark.SparkConf;

/** The spark.croupier.* configuration keys. */
public final class CroupierConf {
  public static final String SERVERS = "spark.croupier.servers";
  public static final String APP_ID = "spark.croupier.appId";
  public static final String PUSH_BLOCK_SIZE = "spark.croupier.push.blockSize";
  public static final String PUSH_MAX_BLOCK_SIZE = "spark.croupier.push.maxBlockSize";
  public static final String PUSH_BATCH_SIZE = "spark.croupier.push.batchSize";
  public static final String PUSH_MAX_IN_FLIGHT = "spark.croupier.push.maxInFlightBatches";
  public static final String COMMIT_INLINE = "spark.croupier.commit.inline";
  public static final String HTTP2_MAX_FRAME_SIZE = "spark.croupier.http2.maxFrameSize";
  public static final String PUSH_ACK_TIMEOUT = "spark.croupier.push.ackTimeout";
  public static final String RPC_TIMEOUT = "spark.croupier.rpc.timeout";
  public static final String CONNECT_TIMEOUT = "spark.croupier.connect.timeout";
  public static final String FETCH_CHUNK_SIZE = "spark.croupier.fetch.chunkSize";
  public static final String FETCH_TIMEOUT = "spark.croupier.fetch.timeout";
  public static final String FETCH_PREFETCH = "spark.croupier.fetch.prefetchChunks";
  public static final String FETCH_ZERO_COPY = "spark.croupier.fetch.zeroCopy";
  public static final String PUSH_BYPASS_THRESHOLD = "spark.croupier.push.bypassThreshold";
  public static final String HEARTBEAT_INTERVAL = "spark.croupier.heartbeat.interval";
  /** File holding the servers' auth token (read by the driver and every executor); preferred over the value. */
  public static final String AUTH_TOKEN_FILE = CroupierSecurity.TOKEN_FILE_KEY;
  /** The servers' auth token itself (redacted in Spark's UI by the default spark.redaction.regex). */
  public static final String AUTH_TOKEN = CroupierSecurity.TOKEN_KEY;
  /** PEM file of the CA that signed the servers' certificates: connect over TLS. */
  public static final String TLS_CA_FILE = CroupierSecurity.CA_FILE_KEY;

  /** Spark's key for the ShuffleDataIO plugin (driver components declare reliable storage). */
  public static final String SHUFFLE_IO_PLUGIN = "spark.shuffle.sort.io.plugin.class";

  /** The largest block / batch a server accepts is bounded by its ~8 MiB message limit. */
  static final long SERVER_MESSAGE_LIMIT = 8L << 20;

  private CroupierConf() {}

  static List<String> servers(SparkConf conf) {
    return ServerList.parse(conf.get(SERVERS, ""));
  }

  static String appId(SparkConf conf) {
    if (conf.contains(APP_ID)) {
      return AppIds.sanitize(conf.get(APP_ID));
    }
    return AppIds.sanitize(conf.getAppId());
  }

  /** Token and TLS settings of this process (from its own SparkConf, on the driver and on executors). */
  static CroupierSecurity security(SparkConf conf) {
    return CroupierSecurity.fromConf(conf.get(AUTH_TOKEN_FILE, null), conf.get(AUTH_TOKEN, null),
        conf.get(TLS_CA_FILE, null));
  }

  static ClientConf clientConf(SparkConf conf) {
    ClientConf c = new ClientConf();
    c.blockBytes = conf.getSizeAsBytes(PUSH_BLOCK_SIZE, "448k");
    long maxBlock = conf.getSizeAsBytes(PUSH_MAX_BLOCK_SIZE, "4m");
    c.maxBlockBytes = (int) Math.max(1024, Math.min(maxBlock, SERVER_MESSAGE_LIMIT / 2));
    c.batchBytes = Math.max(1, conf.getSizeAsBytes(PUSH_BATCH_SIZE, "2m"));
    c.maxBatchBytes = Math.max(c.batchBytes, Math.min(SERVER_MESSAGE_LIMIT * 3 / 4, c.batchBytes * 3));
    c.maxInFlightBatches = Math.max(1, conf.getInt(PUSH_MAX_IN_FLIGHT, 4));
    c.inlineCommit = conf.getBoolean(COMMIT_INLINE, true);
    c.http2MaxFrameBytes = (int) Math.max(16L << 10, Math.min(conf.getSizeAsBytes(HTTP2_MAX_FRAME_SIZE, "1m"),
        (16L << 20) - 1));
    c.ackTimeoutMs = conf.getTimeAsMs(PUSH_ACK_TIMEOUT, "120s");
    c.rpcTimeoutMs = conf.getTimeAsMs(RPC_TIMEOUT, "60s");
    c.connectTimeoutMs = conf.getTimeAsMs(CONNECT_TIMEOUT, "5s");
    c.fetchChunkBytes = (int) Math.min(conf.getSizeAsBytes(FETCH_CHUNK_SIZE, "4032k"), 64L << 20);
    c.fetchTimeoutMs = conf.getTimeAsMs(FETCH_TIMEOUT, "120s");
    c.fetchPrefetchChunks = Math.max(1, conf.getInt(FETCH_PREFETCH, 2));
    c.fetchZeroCopy = conf.getBoolean(FETCH_ZERO_COPY, true);
    c.bypassThreshold = conf.getInt(PUSH_BYPASS_THRESHOLD, 200);
    c.heartbeatIntervalMs = conf.getTimeAsMs(HEARTBEAT_INTERVAL, "10s");
    return c;
  }
}
