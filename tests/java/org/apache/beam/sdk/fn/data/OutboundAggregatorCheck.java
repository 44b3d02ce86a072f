/*
 * Checks of dCMMS's own org.apache.beam.sdk.fn.data.BeamFnDataOutboundAggregator
 * (runners/stack/java/, put ahead of the Beam 2.70 jars) against Beam's real types: options
 * with the data_buffer_* experiments, Beam coders, BeamFnApi.Elements and a recording outbound
 * StreamObserver. Driven by tests/integration/test_outbound_aggregator.py, which compiles this
 * file against the compiled patch and the Flink jars and runs it once per check:
 *
 *   java -cp <this>:<patch classes>:<flink jars>/* \
 *       org.apache.beam.sdk.fn.data.OutboundAggregatorCheck <check>...
 *
 * Report on stdout, one line each: "CLASS <where the aggregator class was loaded from>", then
 * "CHECK <name> ok key=value..." or "CHECK <name> FAIL <why>". Exit status 0 when every check
 * passed, 1 when one failed, 2 on a usage error. In this package so that it can read the
 * package-private flushFuture (a test seam Beam's class has too).
 */
package org.apache.beam.sdk.fn.data;

import java.io.ByteArrayOutputStream;
import java.io.InputStream;
import java.lang.management.ManagementFactory;
import java.lang.reflect.Field;
import java.nio.ByteBuffer;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.Deque;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.ScheduledFuture;
import java.util.concurrent.ScheduledThreadPoolExecutor;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;
import org.apache.beam.model.fnexecution.v1.BeamFnApi.Elements;
import org.apache.beam.sdk.coders.ByteArrayCoder;
import org.apache.beam.sdk.coders.Coder;
import org.apache.beam.sdk.coders.StringUtf8Coder;
import org.apache.beam.sdk.options.ExperimentalOptions;
import org.apache.beam.sdk.options.PipelineOptions;
import org.apache.beam.sdk.options.PipelineOptionsFactory;
import org.apache.beam.vendor.grpc.v1p69p0.com.google.protobuf.ByteString;
import org.apache.beam.vendor.grpc.v1p69p0.io.grpc.stub.StreamObserver;

public final class OutboundAggregatorCheck {

  /** The patch's shared scheduler size: the most threads 5,000 bundles may add. */
  static final int SCHEDULER_THREADS = 4;
  /** Threads the JVM itself may start lazily during the thread check (not the scheduler). */
  static final int THREAD_MARGIN = 8;
  /** How long a time flush of data_buffer_time_limit_ms=20 may take to arrive (a loaded box). */
  static final long TIME_FLUSH_BOUND_MS = 1_000;
  static final int BUNDLES = 5_000;

  private OutboundAggregatorCheck() {}

  public static void main(String[] args) {
    if (args.length == 0) {
      System.err.println(
          "usage: OutboundAggregatorCheck <check>... (size_flush time_flush markers_and_order"
              + " collect_mode discard threads_flat)");
      System.exit(2);
    }
    System.out.println(
        "CLASS "
            + BeamFnDataOutboundAggregator.class
                .getProtectionDomain()
                .getCodeSource()
                .getLocation());
    boolean allOk = true;
    for (String name : args) {
      Map<String, Object> report = new LinkedHashMap<>();
      try {
        switch (name) {
          case "size_flush": sizeFlush(report); break;
          case "time_flush": timeFlush(report); break;
          case "markers_and_order": markersAndOrder(report); break;
          case "collect_mode": collectMode(report); break;
          case "discard": discard(report); break;
          case "threads_flat": threadsFlat(report); break;
          default:
            System.err.println("unknown check: " + name);
            System.exit(2);
        }
        StringBuilder line = new StringBuilder("CHECK " + name + " ok");
        report.forEach((key, value) -> line.append(' ').append(key).append('=').append(value));
        System.out.println(line);
      } catch (Throwable failure) {
        allOk = false;
        String why = String.valueOf(failure.getMessage()).replace('\n', ' ');
        System.out.println("CHECK " + name + " FAIL " + failure.getClass().getSimpleName() + ": "
            + why);
        failure.printStackTrace();
      }
      System.out.flush();
    }
    System.exit(allOk ? 0 : 1);
  }

  // ---------------------------------------------------------------- checks

  /** Data beyond data_buffer_size_limit is sent before the bundle ends, in order. */
  static void sizeFlush(Map<String, Object> report) throws Exception {
    // Without a time limit (the plain receiver) and with one that never fires during the check
    // (the receiver that takes the flush lock): both must flush by size alike.
    for (String timeLimit : new String[] {null, "600000"}) {
      int limit = 1_000;
      List<String> experiments = new ArrayList<>();
      experiments.add(BeamFnDataOutboundAggregator.DATA_BUFFER_SIZE_LIMIT + limit);
      if (timeLimit != null) {
        experiments.add(BeamFnDataOutboundAggregator.DATA_BUFFER_TIME_LIMIT_MS + timeLimit);
      }
      Recorder sent = new Recorder();
      BeamFnDataOutboundAggregator aggregator =
          new BeamFnDataOutboundAggregator(options(experiments), () -> "bundle-s", sent, false);
      aggregator.start();
      FnDataReceiver<byte[]> out =
          aggregator.registerOutputDataLocation("ptransform-s", ByteArrayCoder.of());
      int elementBytes = encodedSize(ByteArrayCoder.of(), payload(0, 300));
      int perFlush = limit / elementBytes + 1; // the first count whose bytes exceed the limit
      int total = 10;
      int sentBeforeEnd = perFlush * (total / perFlush);
      for (int i = 0; i < total; i++) {
        out.accept(payload(i, 300));
      }
      String mode = timeLimit == null ? "no time limit" : "time limit " + timeLimit + " ms";
      List<Elements> before = sent.messages();
      check(before.size() == total / perFlush,
          "%s: %d messages sent before the bundle's end, expected %d (limit %d bytes, %d bytes"
              + " per element, %d elements)",
          mode, before.size(), total / perFlush, limit, elementBytes, total);
      List<Long> indexes = payloadIndexes(dataOf(before, "ptransform-s"));
      int observedBeforeEnd = indexes.size();
      check(indexes.equals(range(0, sentBeforeEnd)),
          "%s: elements sent before the bundle's end %s, expected %s",
          mode, indexes, range(0, sentBeforeEnd));
      for (Elements message : before) {
        for (Elements.Data data : message.getDataList()) {
          check(!data.getIsLast(), "%s: is_last sent before the bundle's end: %s", mode, data);
          check(data.getInstructionId().equals("bundle-s"),
              "%s: instruction id %s, expected bundle-s", mode, data.getInstructionId());
        }
      }
      check(aggregator.sendOrCollectBufferedDataAndFinishOutboundStreams() == null,
          "%s: the end of the bundle returned a message although collecting was not asked for",
          mode);
      List<Elements> all = sent.messages();
      indexes = payloadIndexes(dataOf(all, "ptransform-s"));
      check(indexes.equals(range(0, total)),
          "%s: elements sent in the whole bundle %s, expected %s", mode, indexes, range(0, total));
      checkLastMarkers(all, "bundle-s", List.of("ptransform-s"), List.of());
      aggregator.discard();
      String key = timeLimit == null ? "" : "_locked";
      report.put("messages_before_end" + key, before.size());
      report.put("elements_before_end" + key, observedBeforeEnd + "/" + indexes.size());
    }
    report.put("limit_bytes", 1_000);
    report.put("element_bytes", encodedSize(ByteArrayCoder.of(), payload(0, 300)));
  }

  /** With data_buffer_time_limit_ms=20 buffered data is sent within a bound, no input needed. */
  static void timeFlush(Map<String, Object> report) throws Exception {
    Recorder sent = new Recorder();
    BeamFnDataOutboundAggregator aggregator =
        new BeamFnDataOutboundAggregator(
            options(List.of(BeamFnDataOutboundAggregator.DATA_BUFFER_TIME_LIMIT_MS + 20)),
            () -> "bundle-t", sent, false);
    FnDataReceiver<String> out =
        aggregator.registerOutputDataLocation("ptransform-t", StringUtf8Coder.of());
    aggregator.start();
    List<String> written = new ArrayList<>();
    long[] latencyMs = new long[2];
    for (int round = 0; round < 2; round++) {
      List<String> batch = new ArrayList<>();
      for (int i = 0; i < 3; i++) {
        batch.add("r" + round + "-" + i);
      }
      for (String value : batch) {
        out.accept(value);
      }
      long wroteAt = System.nanoTime();
      written.addAll(batch);
      // A flush may fall between two writes: wait for the message that completes the batch.
      long arrivedAt = awaitData(sent, "ptransform-t", written, TIME_FLUSH_BOUND_MS);
      List<String> flushed = decode(dataOf(sent.messages(), "ptransform-t"), StringUtf8Coder.of());
      check(arrivedAt >= 0,
          "round %d: %s sent within %d ms of the last write, expected %s"
              + " (data_buffer_time_limit_ms=20, default size limit, no further input)",
          round, flushed, TIME_FLUSH_BOUND_MS, written);
      latencyMs[round] = Math.max(0, TimeUnit.NANOSECONDS.toMillis(arrivedAt - wroteAt));
      for (Elements message : sent.messages()) {
        for (Elements.Data data : message.getDataList()) {
          check(!data.getIsLast(), "round %d: a time flush sent is_last: %s", round, data);
        }
      }
    }
    out.accept("end");
    written.add("end");
    check(aggregator.sendOrCollectBufferedDataAndFinishOutboundStreams() == null,
        "the end of the bundle returned a message although collecting was not asked for");
    List<Elements> all = sent.messages();
    List<String> flushed = decode(dataOf(all, "ptransform-t"), StringUtf8Coder.of());
    check(flushed.equals(written), "whole bundle sent %s, expected %s", flushed, written);
    checkLastMarkers(all, "bundle-t", List.of("ptransform-t"), List.of());
    aggregator.discard();
    report.put("time_limit_ms", 20);
    report.put("bound_ms", TIME_FLUSH_BOUND_MS);
    report.put("latency_ms", latencyMs[0] + "," + latencyMs[1]);
  }

  /** The bundle's end sends the remaining data, then one is_last per data and timer endpoint. */
  static void markersAndOrder(Map<String, Object> report) throws Exception {
    Recorder sent = new Recorder();
    AtomicReference<String> instruction = new AtomicReference<>("bundle-m1");
    BeamFnDataOutboundAggregator aggregator =
        new BeamFnDataOutboundAggregator(options(List.of()), instruction::get, sent, false);
    FnDataReceiver<String> read =
        aggregator.registerOutputDataLocation("read", StringUtf8Coder.of());
    FnDataReceiver<String> write =
        aggregator.registerOutputDataLocation("write", StringUtf8Coder.of());
    aggregator.registerOutputDataLocation("idle", StringUtf8Coder.of()); // gets no data
    FnDataReceiver<String> timerA =
        aggregator.registerOutputTimersLocation("read", "family-a", StringUtf8Coder.of());
    FnDataReceiver<String> timerB =
        aggregator.registerOutputTimersLocation("write", "family-b", StringUtf8Coder.of());
    aggregator.start();
    read.accept("x0");
    timerA.accept("ta0");
    write.accept("y0");
    read.accept("x1");
    timerB.accept("tb0");
    timerA.accept("ta1");
    check(sent.count() == 0, "%d messages sent before the bundle's end (default 1 MB limit,"
        + " no time limit, a few bytes written)", sent.count());
    check(aggregator.sendOrCollectBufferedDataAndFinishOutboundStreams() == null,
        "the end of the bundle returned a message although collecting was not asked for");
    List<Elements> first = sent.messages();
    check(first.size() == 1, "the bundle's end sent %d messages, expected 1", first.size());
    checkBundle(first, "bundle-m1",
        Map.of("read", List.of("x0", "x1"), "write", List.of("y0"), "idle", List.of()),
        Map.of("read/family-a", List.of("ta0", "ta1"), "write/family-b", List.of("tb0")));

    // The next bundle on the same aggregator: nothing of the first is sent again.
    instruction.set("bundle-m2");
    write.accept("y1");
    check(aggregator.sendOrCollectBufferedDataAndFinishOutboundStreams() == null,
        "second bundle: the end returned a message although collecting was not asked for");
    List<Elements> second = sent.messages().subList(first.size(), sent.count());
    checkBundle(second, "bundle-m2",
        Map.of("read", List.of(), "write", List.of("y1"), "idle", List.of()),
        Map.of("read/family-a", List.of(), "write/family-b", List.of()));
    aggregator.discard();
    report.put("data_last_markers", countLast(sent.messages(), true));
    report.put("timer_last_markers", countLast(sent.messages(), false));
    report.put("messages", sent.count());
  }

  /**
   * With collectElementsIfNoFlushes the bundle's end returns the remaining data and markers
   * instead of sending them, unless something was sent during that bundle (size or time flush).
   */
  static void collectMode(Map<String, Object> report) throws Exception {
    Recorder sent = new Recorder();
    AtomicReference<String> instruction = new AtomicReference<>("bundle-c1");
    BeamFnDataOutboundAggregator aggregator =
        new BeamFnDataOutboundAggregator(
            options(List.of(BeamFnDataOutboundAggregator.DATA_BUFFER_SIZE_LIMIT + 50)),
            instruction::get, sent, true);
    FnDataReceiver<String> read =
        aggregator.registerOutputDataLocation("read", StringUtf8Coder.of());
    FnDataReceiver<String> timer =
        aggregator.registerOutputTimersLocation("read", "family-a", StringUtf8Coder.of());
    aggregator.start();
    List<String> collectedBundles = new ArrayList<>();

    // 1: small, nothing sent during the bundle -> collected.
    read.accept("x0");
    timer.accept("t0");
    Elements collected = aggregator.sendOrCollectBufferedDataAndFinishOutboundStreams();
    check(collected != null, "bundle 1: nothing was sent during it, yet the end returned null");
    collectedBundles.add("1");
    check(sent.count() == 0, "bundle 1: %d messages sent although they should be collected",
        sent.count());
    checkBundle(List.of(collected), "bundle-c1",
        Map.of("read", List.of("x0")), Map.of("read/family-a", List.of("t0")));

    // 2: a size flush during the bundle -> the end is sent, not collected.
    instruction.set("bundle-c2");
    String big = "y".repeat(60);
    read.accept(big);
    check(sent.count() == 1, "bundle 2: %d messages after writing 60 bytes over a 50-byte"
        + " limit, expected 1 (the size flush)", sent.count());
    read.accept("y1");
    if (aggregator.sendOrCollectBufferedDataAndFinishOutboundStreams() != null) {
      collectedBundles.add("2");
      check(false, "bundle 2: data was sent during the bundle, yet its end was collected");
    }
    checkBundle(sent.messages(), "bundle-c2",
        Map.of("read", List.of(big, "y1")), Map.of("read/family-a", List.of()));

    // 3: the flag is per bundle -> collected again.
    instruction.set("bundle-c3");
    int before = sent.count();
    read.accept("z0");
    collected = aggregator.sendOrCollectBufferedDataAndFinishOutboundStreams();
    check(collected != null, "bundle 3: a flush of bundle 2 made bundle 3's end be sent");
    collectedBundles.add("3");
    check(sent.count() == before, "bundle 3: %d messages sent, expected none",
        sent.count() - before);
    checkBundle(List.of(collected), "bundle-c3",
        Map.of("read", List.of("z0")), Map.of("read/family-a", List.of()));
    aggregator.discard();

    // 4: a time flush during the bundle -> the end is sent too.
    Recorder timed = new Recorder();
    BeamFnDataOutboundAggregator periodic =
        new BeamFnDataOutboundAggregator(
            options(List.of(BeamFnDataOutboundAggregator.DATA_BUFFER_TIME_LIMIT_MS + 20)),
            () -> "bundle-c4", timed, true);
    FnDataReceiver<String> out = periodic.registerOutputDataLocation("read", StringUtf8Coder.of());
    periodic.start();
    out.accept("w0");
    check(timed.awaitCount(1, TIME_FLUSH_BOUND_MS),
        "bundle 4: no time flush within %d ms (data_buffer_time_limit_ms=20)",
        TIME_FLUSH_BOUND_MS);
    out.accept("w1");
    if (periodic.sendOrCollectBufferedDataAndFinishOutboundStreams() != null) {
      collectedBundles.add("4");
      check(false, "bundle 4: a time flush sent data during the bundle, yet its end was collected");
    }
    checkBundle(timed.messages(), "bundle-c4", Map.of("read", List.of("w0", "w1")), Map.of());
    periodic.discard();
    report.put("bundles", 4);
    report.put("collected", String.join(",", collectedBundles));
  }

  /** After discard() nothing more is sent and the periodic task leaves the shared scheduler. */
  static void discard(Map<String, Object> report) throws Exception {
    long periodMs = 200; // long enough that "b0" stays buffered between its write and discard()
    for (int attempt = 1; ; attempt++) {
      Recorder sent = new Recorder();
      BeamFnDataOutboundAggregator aggregator =
          new BeamFnDataOutboundAggregator(
              options(List.of(BeamFnDataOutboundAggregator.DATA_BUFFER_TIME_LIMIT_MS + periodMs)),
              () -> "bundle-d", sent, false);
      FnDataReceiver<String> out =
          aggregator.registerOutputDataLocation("read", StringUtf8Coder.of());
      aggregator.start();
      ScheduledFuture<?> task = aggregator.flushFuture;
      check(task != null, "start() with data_buffer_time_limit_ms=%d scheduled no flush"
          + " (flushFuture is null)", periodMs);
      check(schedulerQueue().contains(task),
          "start() scheduled a flush that is not in the shared scheduler's queue");
      out.accept("a0");
      check(sent.awaitCount(1, periodMs + TIME_FLUSH_BOUND_MS),
          "no time flush of a0 within %d ms (data_buffer_time_limit_ms=%d)",
          periodMs + TIME_FLUSH_BOUND_MS, periodMs);
      out.accept("b0"); // the next flush is ~periodMs away
      long discardStart = System.nanoTime();
      aggregator.discard();
      long discardEnd = System.nanoTime();
      check(task.isCancelled(), "discard() left the periodic flush running (not cancelled)");
      check(!schedulerQueue().contains(task),
          "discard() cancelled the periodic flush but left it in the shared scheduler's queue");
      List<String> sentValues = decode(dataOf(sent.messages(), "read"), StringUtf8Coder.of());
      if (sentValues.contains("b0") && sent.sentAt(sent.count() - 1) < discardStart) {
        // The test thread stalled a whole period between writing b0 and discard(): no verdict.
        check(attempt < 3, "b0 was flushed before discard() in 3 attempts (box too loaded?)");
        continue;
      }
      // Let the shared scheduler run a witness aggregator's flushes until two of the discarded
      // task's periods have passed: a task still scheduled would have sent b0 by then. The
      // witness also shows that discard() left the shared scheduler running.
      int witnessFlushes =
          runWitnessUntil(discardEnd + TimeUnit.MILLISECONDS.toNanos(2 * periodMs));
      int sentAfter = 0;
      for (int i = 0; i < sent.count(); i++) {
        if (sent.sentAt(i) > discardEnd) {
          sentAfter++;
          check(false, "a message was sent %d ms after discard() returned: %s",
              TimeUnit.NANOSECONDS.toMillis(sent.sentAt(i) - discardEnd), sent.messages().get(i));
        }
      }
      sentValues = decode(dataOf(sent.messages(), "read"), StringUtf8Coder.of());
      check(sentValues.equals(List.of("a0")), "sent %s by the discarded aggregator, expected"
          + " [a0] (b0 was written just before discard())", sentValues);
      report.put("period_ms", periodMs);
      report.put("sent_after_discard", sentAfter);
      report.put("task_queued_after_discard", schedulerQueue().contains(task));
      report.put("witness_flushes_after_discard", witnessFlushes);
      report.put("attempts", attempt);
      return;
    }
  }

  /**
   * start/finish/discard 5,000 bundles with the time flush on: the JVM's live threads grow by at
   * most the shared scheduler's size. Beam 2.70's own class starts a single-thread scheduler per
   * aggregator in start() and discard() only cancels its task, so each of these bundles would
   * leave one idle thread behind (~5,000 here; the job server went from 670 to 2,535 threads in
   * a three-minute benchmark, docs/decisions/0004-throughput.md).
   */
  static void threadsFlat(Map<String, Object> report) throws Exception {
    Recorder sent = new Recorder();
    PipelineOptions options =
        options(List.of(BeamFnDataOutboundAggregator.DATA_BUFFER_TIME_LIMIT_MS + 20));
    // Warm up Beam's classes on a throwaway aggregator without a time limit (no scheduling).
    BeamFnDataOutboundAggregator warm =
        new BeamFnDataOutboundAggregator(options(List.of()), () -> "warm", new Recorder(), false);
    warm.registerOutputDataLocation("read", StringUtf8Coder.of()).accept("w");
    warm.sendOrCollectBufferedDataAndFinishOutboundStreams();
    warm.discard();
    int baseline = liveThreads();
    int baselineMx = ManagementFactory.getThreadMXBean().getThreadCount();

    // Up to 16 bundles open at once: several periodic tasks scheduled together, as for the
    // parallel stages of a job.
    Deque<BeamFnDataOutboundAggregator> open = new ArrayDeque<>();
    long started = System.nanoTime();
    for (int i = 0; i < BUNDLES; i++) {
      String id = "bundle-" + i;
      BeamFnDataOutboundAggregator aggregator =
          new BeamFnDataOutboundAggregator(options, () -> id, sent, false);
      FnDataReceiver<String> out =
          aggregator.registerOutputDataLocation("read", StringUtf8Coder.of());
      aggregator.registerOutputTimersLocation("read", "family-a", StringUtf8Coder.of());
      aggregator.start();
      out.accept("e" + i);
      open.addLast(aggregator);
      if (open.size() > 16) {
        finish(open.removeFirst());
      }
    }
    while (!open.isEmpty()) {
      finish(open.removeFirst());
    }
    long elapsedMs = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - started);
    int after = liveThreads();
    int afterMx = ManagementFactory.getThreadMXBean().getThreadCount();
    int queued = schedulerQueue().size();
    long lastMarkers = countLast(sent.messages(), true) + countLast(sent.messages(), false);
    report.put("bundles", BUNDLES);
    report.put("baseline_threads", baseline);
    report.put("after_threads", after);
    report.put("growth", after - baseline);
    report.put("mx_growth", afterMx - baselineMx);
    report.put("scheduler_core_size", scheduler().getCorePoolSize());
    report.put("tasks_left", queued);
    report.put("elapsed_ms", elapsedMs);
    check(lastMarkers == 2L * BUNDLES, "%d is_last markers sent for %d bundles of one data and"
        + " one timer endpoint, expected %d", lastMarkers, BUNDLES, 2L * BUNDLES);
    // Beam's own class would add about one thread per bundle; a small margin over the
    // scheduler's size absorbs threads the JVM itself may start lazily during the loop.
    check(after - baseline <= SCHEDULER_THREADS + THREAD_MARGIN,
        "live threads grew by %d (%d -> %d) over %d bundles with data_buffer_time_limit_ms=20;"
            + " the shared scheduler may add at most %d (+%d for the JVM's own)",
        after - baseline, baseline, after, BUNDLES, SCHEDULER_THREADS, THREAD_MARGIN);
    check(queued == 0, "%d periodic flushes left in the shared scheduler's queue after every"
        + " bundle was discarded", queued);
  }

  // ---------------------------------------------------------------- helpers

  /** A StreamObserver standing in for the data channel: records every message and when. */
  static final class Recorder implements StreamObserver<Elements> {
    private final List<Elements> messages = new ArrayList<>();
    private final List<Long> times = new ArrayList<>();

    @Override
    public synchronized void onNext(Elements value) {
      times.add(System.nanoTime());
      messages.add(value);
      notifyAll();
    }

    @Override
    public void onError(Throwable t) {
      throw new AssertionError("the aggregator called onError on its outbound observer", t);
    }

    @Override
    public void onCompleted() {
      throw new AssertionError("the aggregator completed its outbound observer (the data"
          + " channel is shared by every bundle)");
    }

    synchronized int count() {
      return messages.size();
    }

    synchronized List<Elements> messages() {
      return new ArrayList<>(messages);
    }

    synchronized long sentAt(int index) {
      return times.get(index);
    }

    /** Waits until at least {@code n} messages arrived; false after {@code timeoutMs}. */
    synchronized boolean awaitCount(int n, long timeoutMs) throws InterruptedException {
      long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(timeoutMs);
      while (messages.size() < n) {
        long left = deadline - System.nanoTime();
        if (left <= 0) {
          return false;
        }
        TimeUnit.NANOSECONDS.timedWait(this, left);
      }
      return true;
    }
  }

  /**
   * Waits until the data sent to {@code transformId} decodes to {@code expected}; returns when
   * the message completing it arrived (System.nanoTime), or -1 after {@code boundMs}.
   */
  private static long awaitData(
      Recorder sent, String transformId, List<String> expected, long boundMs) throws Exception {
    long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(boundMs);
    while (true) {
      List<Elements> snapshot = sent.messages();
      int count = snapshot.size();
      List<String> got = decode(dataOf(snapshot, transformId), StringUtf8Coder.of());
      if (got.equals(expected)) {
        return sent.sentAt(count - 1);
      }
      long leftMs = TimeUnit.NANOSECONDS.toMillis(deadline - System.nanoTime());
      if (got.size() >= expected.size() || leftMs <= 0 || !sent.awaitCount(count + 1, leftMs)) {
        return -1;
      }
    }
  }

  /** Flushes a second aggregator on the shared scheduler until {@code untilNanos}. */
  private static int runWitnessUntil(long untilNanos) throws Exception {
    Recorder sent = new Recorder();
    BeamFnDataOutboundAggregator witness =
        new BeamFnDataOutboundAggregator(
            options(List.of(BeamFnDataOutboundAggregator.DATA_BUFFER_TIME_LIMIT_MS + 20)),
            () -> "witness", sent, false);
    FnDataReceiver<String> out = witness.registerOutputDataLocation("w", StringUtf8Coder.of());
    witness.start();
    int flushes = 0;
    try {
      while (flushes == 0 || sent.sentAt(flushes - 1) < untilNanos) {
        out.accept("w" + flushes);
        check(sent.awaitCount(flushes + 1, TIME_FLUSH_BOUND_MS),
            "the witness aggregator got no time flush within %d ms: discard() of another"
                + " aggregator stopped the shared scheduler?", TIME_FLUSH_BOUND_MS);
        flushes++;
      }
    } finally {
      witness.discard();
    }
    return flushes;
  }

  private static void finish(BeamFnDataOutboundAggregator aggregator) {
    aggregator.sendOrCollectBufferedDataAndFinishOutboundStreams();
    aggregator.discard();
  }

  private static PipelineOptions options(List<String> experiments) {
    PipelineOptions options = PipelineOptionsFactory.create();
    options.as(ExperimentalOptions.class).setExperiments(new ArrayList<>(experiments));
    return options;
  }

  /** Our class's shared scheduler (a private static field: read by reflection). */
  private static ScheduledThreadPoolExecutor scheduler() throws Exception {
    Field field;
    try {
      field = BeamFnDataOutboundAggregator.class.getDeclaredField("FLUSH_SCHEDULER");
    } catch (NoSuchFieldException missing) {
      throw new AssertionError("no static FLUSH_SCHEDULER in " + BeamFnDataOutboundAggregator.class
          + " from " + BeamFnDataOutboundAggregator.class.getProtectionDomain().getCodeSource()
          + ": is Beam's own class loaded instead of runners/stack/java's?", missing);
    }
    field.setAccessible(true);
    return (ScheduledThreadPoolExecutor) field.get(null);
  }

  private static java.util.concurrent.BlockingQueue<Runnable> schedulerQueue() throws Exception {
    return scheduler().getQueue();
  }

  private static int liveThreads() {
    return Thread.getAllStackTraces().size();
  }

  /** Every data and timer endpoint gets exactly its payload in order, then one is_last. */
  private static void checkBundle(
      List<Elements> messages, String instructionId,
      Map<String, List<String>> data, Map<String, List<String>> timers) throws Exception {
    for (Map.Entry<String, List<String>> endpoint : data.entrySet()) {
      List<String> got = decode(dataOf(messages, endpoint.getKey()), StringUtf8Coder.of());
      check(got.equals(endpoint.getValue()), "%s: data endpoint %s sent %s, expected %s",
          instructionId, endpoint.getKey(), got, endpoint.getValue());
    }
    for (Map.Entry<String, List<String>> endpoint : timers.entrySet()) {
      String[] key = endpoint.getKey().split("/", 2);
      List<String> got = decode(timersOf(messages, key[0], key[1]), StringUtf8Coder.of());
      check(got.equals(endpoint.getValue()), "%s: timer endpoint %s sent %s, expected %s",
          instructionId, endpoint.getKey(), got, endpoint.getValue());
    }
    checkLastMarkers(
        messages, instructionId, new ArrayList<>(data.keySet()), new ArrayList<>(timers.keySet()));
  }

  /**
   * Exactly one is_last per endpoint, with no payload, after every other entry of that endpoint,
   * in the last message; none for an endpoint not named; every entry carries the instruction id.
   */
  private static void checkLastMarkers(
      List<Elements> messages, String instructionId, List<String> dataEndpoints,
      List<String> timerEndpoints) {
    check(!messages.isEmpty(), "%s: nothing was sent or collected", instructionId);
    Set<String> marked = new LinkedHashSet<>();
    for (int m = 0; m < messages.size(); m++) {
      Elements message = messages.get(m);
      boolean inLast = m == messages.size() - 1;
      for (Elements.Data entry : message.getDataList()) {
        String key = entry.getTransformId();
        check(entry.getInstructionId().equals(instructionId),
            "data entry of %s has instruction id %s, expected %s",
            key, entry.getInstructionId(), instructionId);
        checkEntry(entry.getIsLast(), entry.getData(), "data " + key, inLast, marked,
            instructionId);
      }
      for (Elements.Timers entry : message.getTimersList()) {
        String key = entry.getTransformId() + "/" + entry.getTimerFamilyId();
        check(entry.getInstructionId().equals(instructionId),
            "timers entry of %s has instruction id %s, expected %s",
            key, entry.getInstructionId(), instructionId);
        checkEntry(entry.getIsLast(), entry.getTimers(), "timers " + key, inLast, marked,
            instructionId);
      }
    }
    Set<String> expected = new LinkedHashSet<>();
    dataEndpoints.forEach(key -> expected.add("data " + key));
    timerEndpoints.forEach(key -> expected.add("timers " + key));
    check(marked.equals(expected), "%s: is_last markers for %s, expected one for each of %s",
        instructionId, marked, expected);
  }

  /** A payload entry must precede its endpoint's is_last; the marker comes once, empty. */
  private static void checkEntry(
      boolean isLast, ByteString payload, String key, boolean inLastMessage, Set<String> marked,
      String instructionId) {
    check(!marked.contains(key), "%s: %s of %s sent after its is_last marker",
        instructionId, isLast ? "a second is_last" : "data", key);
    if (isLast) {
      check(payload.isEmpty(), "%s: the is_last marker of %s carries %d bytes",
          instructionId, key, payload.size());
      check(inLastMessage, "%s: is_last of %s is not in the bundle's last message",
          instructionId, key);
      marked.add(key);
    } else {
      check(!payload.isEmpty(), "%s: an empty non-last entry for %s", instructionId, key);
    }
  }

  private static long countLast(List<Elements> messages, boolean data) {
    long count = 0;
    for (Elements message : messages) {
      count += data
          ? message.getDataList().stream().filter(Elements.Data::getIsLast).count()
          : message.getTimersList().stream().filter(Elements.Timers::getIsLast).count();
    }
    return count;
  }

  private static List<ByteString> dataOf(List<Elements> messages, String transformId) {
    List<ByteString> out = new ArrayList<>();
    for (Elements message : messages) {
      for (Elements.Data data : message.getDataList()) {
        if (data.getTransformId().equals(transformId) && !data.getIsLast()) {
          out.add(data.getData());
        }
      }
    }
    return out;
  }

  private static List<ByteString> timersOf(
      List<Elements> messages, String transformId, String family) {
    List<ByteString> out = new ArrayList<>();
    for (Elements message : messages) {
      for (Elements.Timers timers : message.getTimersList()) {
        if (timers.getTransformId().equals(transformId)
            && timers.getTimerFamilyId().equals(family) && !timers.getIsLast()) {
          out.add(timers.getTimers());
        }
      }
    }
    return out;
  }

  private static <T> List<T> decode(List<ByteString> chunks, Coder<T> coder) throws Exception {
    List<T> out = new ArrayList<>();
    for (ByteString chunk : chunks) {
      InputStream in = chunk.newInput();
      while (in.available() > 0) {
        out.add(coder.decode(in));
      }
    }
    return out;
  }

  private static List<Long> payloadIndexes(List<ByteString> chunks) throws Exception {
    List<Long> out = new ArrayList<>();
    for (byte[] value : decode(chunks, ByteArrayCoder.of())) {
      out.add(ByteBuffer.wrap(value).getLong());
    }
    return out;
  }

  private static byte[] payload(long index, int size) {
    byte[] value = new byte[size];
    ByteBuffer.wrap(value).putLong(index);
    return value;
  }

  private static <T> int encodedSize(Coder<T> coder, T value) throws Exception {
    ByteArrayOutputStream out = new ByteArrayOutputStream();
    coder.encode(value, out);
    return out.size();
  }

  private static List<Long> range(long from, long to) {
    List<Long> out = new ArrayList<>();
    for (long i = from; i < to; i++) {
      out.add(i);
    }
    return out;
  }

  private static void check(boolean condition, String format, Object... args) {
    if (!condition) {
      throw new AssertionError(String.format(format, args));
    }
  }
}
