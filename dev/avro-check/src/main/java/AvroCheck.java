import java.io.ByteArrayOutputStream;
import java.io.File;
import java.io.IOException;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import org.apache.avro.Schema;
import org.apache.avro.AvroRuntimeException;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericDatumReader;
import org.apache.avro.generic.GenericDatumWriter;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.Decoder;
import org.apache.avro.io.DecoderFactory;
import org.apache.avro.io.JsonEncoder;
import org.apache.avro.io.EncoderFactory;
import org.apache.avro.message.BinaryMessageDecoder;
import org.apache.avro.message.BinaryMessageEncoder;

/**
 * Reads and writes Avro single-object encoding with Apache Avro's own Java implementation, so
 * that ClipGuard's Python codec can be compared with it byte for byte.
 *
 * <pre>
 *   AvroCheck decode SCHEMA_DIR FULL_NAME BYTES_FILE          prints the record as Avro JSON
 *   AvroCheck encode SCHEMA_DIR FULL_NAME JSON_FILE OUT_FILE  writes single-object bytes
 * </pre>
 *
 * SCHEMA_DIR holds the .avsc files (one may refer to a type named in another); the JSON is
 * Avro's JSON encoding (unions tagged with the branch's type name).
 */
public final class AvroCheck {

  /**
   * Avro writes a map's entries in the order the map yields them; GenericData's HashMap would
   * reorder them, and then two encodings of the same record would differ in bytes for no fault
   * of either codec. Keeping the order read makes a byte comparison meaningful.
   */
  static final class OrderedMapData extends GenericData {
    @Override
    public Object newMap(Object old, int size) {
      if (old instanceof LinkedHashMap) {
        ((Map<?, ?>) old).clear();
        return old;
      }
      return new LinkedHashMap<>(size);
    }
  }

  public static void main(String[] args) throws IOException {
    if (args.length < 4 || !(args[0].equals("decode") || args[0].equals("encode"))
        || (args[0].equals("encode") && args.length < 5)) {
      System.err.println("usage: AvroCheck decode SCHEMA_DIR FULL_NAME BYTES_FILE\n"
          + "       AvroCheck encode SCHEMA_DIR FULL_NAME JSON_FILE OUT_FILE");
      System.exit(2);
    }
    Map<String, Schema> schemas = loadSchemas(Path.of(args[1]));
    Schema schema = schemas.get(args[2]);
    if (schema == null) {
      System.err.println("no schema named " + args[2] + " in " + args[1] + "; known: "
          + schemas.keySet());
      System.exit(2);
    }
    GenericData model = new OrderedMapData();
    if (args[0].equals("decode")) {
      byte[] message = Files.readAllBytes(Path.of(args[3]));
      GenericRecord record = new BinaryMessageDecoder<GenericRecord>(model, schema).decode(message);
      System.out.println(toJson(model, schema, record));
    } else {
      String json = Files.readString(Path.of(args[3]), StandardCharsets.UTF_8);
      Decoder decoder = DecoderFactory.get().jsonDecoder(schema, json);
      GenericRecord record =
          new GenericDatumReader<GenericRecord>(schema, schema, model).read(null, decoder);
      try (OutputStream out = Files.newOutputStream(Path.of(args[4]))) {
        new BinaryMessageEncoder<GenericRecord>(model, schema).encode(record, out);
      }
    }
  }

  static String toJson(GenericData model, Schema schema, GenericRecord record) throws IOException {
    ByteArrayOutputStream out = new ByteArrayOutputStream();
    JsonEncoder encoder = EncoderFactory.get().jsonEncoder(schema, out);
    new GenericDatumWriter<GenericRecord>(schema, model).write(record, encoder);
    encoder.flush();
    return out.toString(StandardCharsets.UTF_8);
  }

  /**
   * Parses every .avsc file of the folder. A file may name a type defined in another one, so
   * files that fail on an undefined name are retried once the others are known.
   */
  static Map<String, Schema> loadSchemas(Path dir) throws IOException {
    File[] files = dir.toFile().listFiles((d, name) -> name.endsWith(".avsc"));
    if (files == null || files.length == 0) {
      throw new IOException("no .avsc files in " + dir);
    }
    Arrays.sort(files);
    Map<String, Schema> known = new HashMap<>();
    List<File> pending = new ArrayList<>(Arrays.asList(files));
    while (!pending.isEmpty()) {
      List<File> failed = new ArrayList<>();
      AvroRuntimeException lastError = null;
      for (File file : pending) {
        Schema.Parser parser = new Schema.Parser();
        parser.addTypes(known.values());
        try {
          Schema schema = parser.parse(file);
          known.put(schema.getFullName(), schema);
          known.putAll(parser.getTypes());
        } catch (AvroRuntimeException e) {
          // SchemaParseException, or (Avro 1.12) AvroTypeException for an undefined name.
          failed.add(file);
          lastError = e;
        }
      }
      if (failed.size() == pending.size()) {
        throw new IOException("cannot parse " + failed + ": " + lastError.getMessage(), lastError);
      }
      pending = failed;
    }
    return known;
  }
}
