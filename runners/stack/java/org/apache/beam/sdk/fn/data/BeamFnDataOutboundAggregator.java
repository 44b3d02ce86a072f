/*
 * dCMMS replacement for Beam 2.70's org.apache.beam.sdk.fn.data.BeamFnDataOutboundAggregator,
 * put ahead of the Beam jars on the Flink JVMs' classpath (runners/stack/jvm_patches.py).
 * Written for this project against the class's public API (javap of beam-sdks-java-core 2.70.0).
 *
 * Why: with the experiment data_buffer_time_limit_ms=N, the job server hands a stage's input
 * to the SDK worker every N ms instead of only at the bundle's end (1 MB buffer), so the
 * worker processes a bundle while it fills. Beam's class starts a new single-thread
 * ScheduledExecutorService for every aggregator, and the runner makes one aggregator per
 * bundle; discard() cancels the periodic task but never shuts the executor down, so every
 * bundle leaked one idle thread (670 -> 2,535 job-server threads in a three-minute
 * benchmark, docs/decisions/0004-throughput.md). Here every aggregator of the JVM shares one
 * daemon scheduler and discard() removes its task, so the thread count stays flat.
 *
 * Behaviour otherwise as Beam documents it: output of each registered data or timer
 * endpoint is buffered and sent as one Elements message when the buffered bytes exceed
 * data_buffer_size_limit (default 1,000,000), on the periodic flush if a time limit is set,
 * and at the end of the bundle, where every endpoint gets its is_last marker. With
 * collectElementsIfNoFlushes the end-of-bundle message is returned to the caller instead of
 * sent when nothing was sent during the bundle (the SDK harness embeds it in its response).
 */
package org.apache.beam.sdk.fn.data;

import java.io.IOException;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.concurrent.CancellationException;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ScheduledFuture;
import java.util.concurrent.ScheduledThreadPoolExecutor;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.function.Supplier;
import org.apache.beam.model.fnexecution.v1.BeamFnApi.Elements;
import org.apache.beam.sdk.coders.Coder;
import org.apache.beam.sdk.options.ExperimentalOptions;
import org.apache.beam.sdk.options.PipelineOptions;
import org.apache.beam.sdk.util.ByteStringOutputStream;
import org.apache.beam.vendor.grpc.v1p69p0.io.grpc.stub.StreamObserver;

/** Buffers a bundle's outbound data and timers; flushes by size, by time and at bundle end. */
public class BeamFnDataOutboundAggregator {

  public static final String DATA_BUFFER_SIZE_LIMIT = "data_buffer_size_limit=";
  public static final int DEFAULT_BUFFER_LIMIT_BYTES = 1_000_000;
  public static final String DATA_BUFFER_TIME_LIMIT_MS = "data_buffer_time_limit_ms=";
  public static final long DEFAULT_BUFFER_LIMIT_TIME_MS = -1L;

  /** One scheduler for the periodic flushes of every aggregator in this JVM. */
  private static final ScheduledThreadPoolExecutor FLUSH_SCHEDULER = newFlushScheduler();

  private final int sizeLimit;
  private final long timeLimitMs;
  private final Supplier<String> instructionId;
  private final StreamObserver<Elements> outbound;
  private final boolean collectElementsIfNoFlushes;
  // Insertion-ordered so the is_last markers keep the registration order.
  private final Map<String, Buffer<?>> dataBuffers = new LinkedHashMap<>();
  private final Map<TimerKey, Buffer<?>> timerBuffers = new LinkedHashMap<>();
  // Guards the buffers against the periodic flush; uncontended when no time limit is set.
  private final Object lock = new Object();
  private long unsentBytes;
  private boolean sentDuringBundle;
  ScheduledFuture<?> flushFuture; // package-private like Beam's (its tests read it)

  public BeamFnDataOutboundAggregator(
      PipelineOptions options,
      Supplier<String> processBundleRequestIdSupplier,
      StreamObserver<Elements> outboundObserver,
      boolean collectElementsIfNoFlushes) {
    List<String> experiments = options.as(ExperimentalOptions.class).getExperiments();
    this.sizeLimit =
        (int) experimentValue(experiments, DATA_BUFFER_SIZE_LIMIT, DEFAULT_BUFFER_LIMIT_BYTES);
    this.timeLimitMs =
        experimentValue(experiments, DATA_BUFFER_TIME_LIMIT_MS, DEFAULT_BUFFER_LIMIT_TIME_MS);
    this.instructionId = processBundleRequestIdSupplier;
    this.outbound = outboundObserver;
    this.collectElementsIfNoFlushes = collectElementsIfNoFlushes;
  }

  /** Schedules the periodic flush when data_buffer_time_limit_ms is set (once per aggregator). */
  public void start() {
    if (timeLimitMs > 0 && flushFuture == null) {
      flushFuture =
          FLUSH_SCHEDULER.scheduleAtFixedRate(
              this::flush, timeLimitMs, timeLimitMs, TimeUnit.MILLISECONDS);
    }
  }

  public <T> FnDataReceiver<T> registerOutputDataLocation(String pTransformId, Coder<T> coder) {
    if (dataBuffers.containsKey(pTransformId)) {
      throw new IllegalStateException(
          "Outbound data endpoint already registered for " + pTransformId);
    }
    Buffer<T> buffer = new Buffer<>(coder);
    dataBuffers.put(pTransformId, buffer);
    return receiverFor(buffer);
  }

  public <T> FnDataReceiver<T> registerOutputTimersLocation(
      String pTransformId, String timerFamilyId, Coder<T> coder) {
    TimerKey key = new TimerKey(pTransformId, timerFamilyId);
    if (timerBuffers.containsKey(key)) {
      throw new IllegalStateException("Outbound timers endpoint already registered for " + key);
    }
    Buffer<T> buffer = new Buffer<>(coder);
    timerBuffers.put(key, buffer);
    return receiverFor(buffer);
  }

  private <T> FnDataReceiver<T> receiverFor(Buffer<T> buffer) {
    if (timeLimitMs <= 0) {
      return buffer;
    }
    return value -> {
      rethrowFlushFailure();
      synchronized (lock) {
        buffer.accept(value);
      }
    };
  }

  /**
   * Ends the bundle's streams: sends what is buffered plus an is_last marker per endpoint, or
   * returns that message when collecting was asked for and nothing was sent during the bundle.
   */
  public Elements sendOrCollectBufferedDataAndFinishOutboundStreams() {
    if (dataBuffers.isEmpty() && timerBuffers.isEmpty()) {
      return null;
    }
    Elements.Builder last;
    boolean sentBefore;
    synchronized (lock) {
      last = drainBuffers();
      sentBefore = sentDuringBundle;
      sentDuringBundle = false;
    }
    String id = instructionId.get();
    for (String transformId : dataBuffers.keySet()) {
      last.addDataBuilder().setInstructionId(id).setTransformId(transformId).setIsLast(true);
    }
    for (TimerKey key : timerBuffers.keySet()) {
      last.addTimersBuilder()
          .setInstructionId(id)
          .setTransformId(key.transformId)
          .setTimerFamilyId(key.timerFamilyId)
          .setIsLast(true);
    }
    dataBuffers.values().forEach(Buffer::resetCounts);
    timerBuffers.values().forEach(Buffer::resetCounts);
    if (collectElementsIfNoFlushes && !sentBefore) {
      return last.build();
    }
    outbound.onNext(last.build());
    return null;
  }

  public void sendElements(Elements elements) {
    outbound.onNext(elements);
  }

  /** Stops the periodic flush; the runner calls it after every bundle, the harness at teardown. */
  public void discard() {
    ScheduledFuture<?> future = flushFuture;
    if (future != null) {
      future.cancel(false); // the scheduler removes cancelled tasks at once
    }
  }

  /** Sends what is buffered now (the periodic flush). */
  void flush() {
    synchronized (lock) {
      sendBuffered();
    }
  }

  // Callers hold the lock when a time limit is set.
  private void sendBuffered() {
    if (unsentBytes == 0) {
      return;
    }
    Elements.Builder elements = drainBuffers();
    if (elements.getDataCount() > 0 || elements.getTimersCount() > 0) {
      outbound.onNext(elements.build());
    }
    sentDuringBundle = true;
  }

  // Callers hold the lock when a time limit is set.
  private Elements.Builder drainBuffers() {
    Elements.Builder elements = Elements.newBuilder();
    unsentBytes = 0;
    if (dataBuffers.isEmpty() && timerBuffers.isEmpty()) {
      return elements;
    }
    String id = instructionId.get();
    for (Map.Entry<String, Buffer<?>> entry : dataBuffers.entrySet()) {
      Buffer<?> buffer = entry.getValue();
      if (buffer.isEmpty()) {
        continue;
      }
      elements.addDataBuilder()
          .setInstructionId(id)
          .setTransformId(entry.getKey())
          .setData(buffer.takeBytes());
    }
    for (Map.Entry<TimerKey, Buffer<?>> entry : timerBuffers.entrySet()) {
      Buffer<?> buffer = entry.getValue();
      if (buffer.isEmpty()) {
        continue;
      }
      elements.addTimersBuilder()
          .setInstructionId(id)
          .setTransformId(entry.getKey().transformId)
          .setTimerFamilyId(entry.getKey().timerFamilyId)
          .setTimers(buffer.takeBytes());
    }
    return elements;
  }

  /** A failed periodic flush fails the next write of the bundle, as in Beam. */
  private void rethrowFlushFailure() throws IOException {
    ScheduledFuture<?> future = flushFuture;
    if (future == null || !future.isDone()) {
      return;
    }
    try {
      future.get();
      throw new IOException("Periodic flushing thread finished unexpectedly.");
    } catch (CancellationException cancelled) {
      throw new IOException("write after the outbound aggregator was discarded", cancelled);
    } catch (ExecutionException failed) {
      Throwable cause = failed.getCause();
      if (cause instanceof IOException) {
        throw (IOException) cause;
      }
      throw new IOException(cause);
    } catch (InterruptedException interrupted) {
      Thread.currentThread().interrupt();
      throw new IOException(interrupted);
    }
  }

  private static long experimentValue(List<String> experiments, String prefix, long fallback) {
    if (experiments != null) {
      for (String experiment : experiments) {
        if (experiment.startsWith(prefix)) {
          return Long.parseLong(experiment.substring(prefix.length()));
        }
      }
    }
    return fallback;
  }

  // A few threads, so that a flush blocked on one slow stream (gRPC flow control) does not
  // hold up the flushes of the other bundles.
  private static final int FLUSH_THREADS = 4;

  private static ScheduledThreadPoolExecutor newFlushScheduler() {
    AtomicInteger threads = new AtomicInteger();
    ScheduledThreadPoolExecutor scheduler =
        new ScheduledThreadPoolExecutor(
            FLUSH_THREADS,
            task -> {
              Thread thread =
                  new Thread(task, "DataBufferOutboundFlusher-shared-" + threads.incrementAndGet());
              thread.setDaemon(true);
              return thread;
            });
    scheduler.setRemoveOnCancelPolicy(true);
    return scheduler;
  }

  /** One endpoint's encoded, not yet sent elements, and its per-bundle counts. */
  class Buffer<T> implements FnDataReceiver<T> {
    private final ByteStringOutputStream bytes = new ByteStringOutputStream();
    private final Coder<T> coder;
    private long bundleBytes;
    private long bundleElements;

    Buffer(Coder<T> coder) {
      this.coder = coder;
    }

    @Override
    public void accept(T value) throws Exception {
      int before = bytes.size();
      coder.encode(value, bytes);
      if (bytes.size() == before) {
        bytes.write(0); // an element must take at least one byte on the wire
      }
      long written = (long) bytes.size() - before;
      unsentBytes += written;
      bundleBytes += written;
      bundleElements += 1;
      if (unsentBytes > sizeLimit) {
        sendBuffered();
      }
    }

    boolean isEmpty() {
      return bytes.size() == 0;
    }

    org.apache.beam.vendor.grpc.v1p69p0.com.google.protobuf.ByteString takeBytes() {
      return bytes.toByteStringAndReset();
    }

    void resetCounts() {
      bundleBytes = 0;
      bundleElements = 0;
    }

    @Override
    public String toString() {
      return "bytes: " + bundleBytes + ", elements: " + bundleElements;
    }
  }

  private static final class TimerKey {
    private final String transformId;
    private final String timerFamilyId;

    TimerKey(String transformId, String timerFamilyId) {
      this.transformId = transformId;
      this.timerFamilyId = timerFamilyId;
    }

    @Override
    public boolean equals(Object other) {
      return other instanceof TimerKey
          && ((TimerKey) other).transformId.equals(transformId)
          && ((TimerKey) other).timerFamilyId.equals(timerFamilyId);
    }

    @Override
    public int hashCode() {
      return Objects.hash(transformId, timerFamilyId);
    }

    @Override
    public String toString() {
      return transformId + "/" + timerFamilyId;
    }
  }
}
