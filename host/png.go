// png.go writes generated images as PNG files carrying AUTOMATIC1111's
// "parameters" text chunk (the infotext A1111, CivitAI and most image
// browsers read), and reads text chunks back. Pixels are converted as
// ComfyUI and A1111 do: clamp((x+1)/2, 0, 1) * 255 in float32, truncated to
// uint8. The chunk is tEXt when the text is Latin-1 (as PIL writes it), iTXt
// (UTF-8, uncompressed) otherwise, placed right after IHDR. It does not write
// other metadata (ComfyUI's workflow JSON, EXIF) and reads only text chunks.
package host

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"image"
	"image/png"
	"io"
	"unicode/utf8"

	"github.com/sdbridge/sdbridge/nn"
)

// pngSignature is the 8-byte PNG file signature.
var pngSignature = []byte("\x89PNG\r\n\x1a\n")

// ToRGBA converts image i of img [B, 3, H, W] (about [-1, 1]) to 8-bit RGBA.
func ToRGBA(img *nn.Tensor, i int) (*image.NRGBA, error) {
	if len(img.Shape) != 4 || img.Shape[1] != 3 || i < 0 || i >= img.Shape[0] {
		return nil, fmt.Errorf("png: image tensor %v has no RGB image %d", img.Shape, i)
	}
	h, w := img.Shape[2], img.Shape[3]
	plane := h * w
	src := img.Data[i*3*plane : (i+1)*3*plane] // [3, H, W]
	out := image.NewNRGBA(image.Rect(0, 0, w, h))
	for p := range plane {
		for c := range 3 {
			out.Pix[4*p+c] = toByte(src[c*plane+p])
		}
		out.Pix[4*p+3] = 255
	}
	return out, nil
}

// toByte is 255 * clamp((x+1)/2, 0, 1) truncated, in float32 (torch.clamp
// then numpy astype(uint8)); NaN gives 0.
func toByte(x float32) uint8 {
	v := (x + 1) / 2
	if !(v > 0) {
		return 0
	}
	if v > 1 {
		v = 1
	}
	return uint8(255 * v)
}

// WritePNG encodes img as PNG with a "parameters" text chunk (omitted when
// parameters is empty).
func WritePNG(w io.Writer, img image.Image, parameters string) error {
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		return fmt.Errorf("png: %w", err)
	}
	b := buf.Bytes()
	const ihdrEnd = 8 + 4 + 4 + 13 + 4 // signature, IHDR length, type, data, CRC
	if len(b) < ihdrEnd || !bytes.Equal(b[:8], pngSignature) || string(b[12:16]) != "IHDR" {
		return errors.New("png: encoder produced an unexpected stream")
	}
	if _, err := w.Write(b[:ihdrEnd]); err != nil {
		return err
	}
	if parameters != "" {
		if err := writeTextChunk(w, "parameters", parameters); err != nil {
			return err
		}
	}
	_, err := w.Write(b[ihdrEnd:])
	return err
}

// writeTextChunk writes key=text as tEXt (Latin-1) or iTXt (UTF-8).
func writeTextChunk(w io.Writer, key, text string) error {
	var data []byte
	typ := "tEXt"
	if latin, ok := toLatin1(text); ok {
		data = append(append([]byte(key), 0), latin...)
	} else {
		typ = "iTXt"
		// keyword, 0, compression flag 0, method 0, language "", 0, translated key "", 0, text
		data = append(append([]byte(key), 0, 0, 0, 0, 0), text...)
	}
	return writeChunk(w, typ, data)
}

func writeChunk(w io.Writer, typ string, data []byte) error {
	var hdr [8]byte
	binary.BigEndian.PutUint32(hdr[:4], uint32(len(data)))
	copy(hdr[4:], typ)
	crc := crc32.NewIEEE()
	crc.Write(hdr[4:])
	crc.Write(data)
	var sum [4]byte
	binary.BigEndian.PutUint32(sum[:], crc.Sum32())
	for _, part := range [][]byte{hdr[:], data, sum[:]} {
		if _, err := w.Write(part); err != nil {
			return err
		}
	}
	return nil
}

// toLatin1 encodes s as ISO-8859-1 when every rune fits.
func toLatin1(s string) ([]byte, bool) {
	out := make([]byte, 0, len(s))
	for _, r := range s {
		if r > 0xFF { // invalid UTF-8 decodes as U+FFFD and lands here too
			return nil, false
		}
		out = append(out, byte(r))
	}
	return out, true
}

// maxTextChunk bounds a text chunk (and an inflated iTXt) read back.
const maxTextChunk = 16 << 20

// ReadPNGText returns the tEXt and iTXt chunks of a PNG stream as
// key -> UTF-8 text. It checks the signature and chunk framing (not CRCs or
// image data) and stops at IEND.
func ReadPNGText(b []byte) (map[string]string, error) {
	if len(b) < 8 || !bytes.Equal(b[:8], pngSignature) {
		return nil, errors.New("png: not a PNG file")
	}
	out := map[string]string{}
	for p := 8; ; {
		if len(b)-p < 12 {
			return nil, fmt.Errorf("png: truncated chunk at byte %d", p)
		}
		n := binary.BigEndian.Uint32(b[p : p+4])
		typ := string(b[p+4 : p+8])
		if uint64(n) > uint64(len(b)-p-12) {
			return nil, fmt.Errorf("png: chunk %q at byte %d claims %d bytes, %d left", typ, p, n, len(b)-p-12)
		}
		data := b[p+8 : p+8+int(n)]
		p += 12 + int(n)
		switch typ {
		case "IEND":
			return out, nil
		case "tEXt":
			k, v, ok := bytes.Cut(data, []byte{0})
			if !ok {
				return nil, fmt.Errorf("png: tEXt chunk without a keyword separator")
			}
			out[string(k)] = fromLatin1(v)
		case "iTXt":
			k, v, err := parseITXt(data)
			if err != nil {
				return nil, err
			}
			out[k] = v
		}
	}
}

func fromLatin1(b []byte) string {
	rs := make([]rune, len(b))
	for i, c := range b {
		rs[i] = rune(c)
	}
	return string(rs)
}

// parseITXt decodes keyword\0 flag method lang\0 translated\0 text.
func parseITXt(data []byte) (string, string, error) {
	k, rest, ok := bytes.Cut(data, []byte{0})
	if !ok || len(rest) < 2 {
		return "", "", errors.New("png: malformed iTXt chunk")
	}
	compressed, method := rest[0], rest[1]
	_, rest, ok = bytes.Cut(rest[2:], []byte{0}) // language tag
	if !ok {
		return "", "", errors.New("png: malformed iTXt language tag")
	}
	_, text, ok := bytes.Cut(rest, []byte{0}) // translated keyword
	if !ok {
		return "", "", errors.New("png: malformed iTXt translated keyword")
	}
	if compressed != 0 {
		if method != 0 {
			return "", "", fmt.Errorf("png: iTXt compression method %d", method)
		}
		zr, err := zlib.NewReader(bytes.NewReader(text))
		if err != nil {
			return "", "", fmt.Errorf("png: iTXt: %w", err)
		}
		inflated, err := io.ReadAll(io.LimitReader(zr, maxTextChunk+1))
		if err != nil {
			return "", "", fmt.Errorf("png: iTXt: %w", err)
		}
		if len(inflated) > maxTextChunk {
			return "", "", errors.New("png: iTXt text over 16 MiB")
		}
		text = inflated
	}
	if !utf8.Valid(text) {
		return "", "", errors.New("png: iTXt text is not UTF-8")
	}
	return string(k), string(text), nil
}
