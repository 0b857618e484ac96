// sdk_test.go: descriptor arithmetic (bounds, alignment, overflow), params,
// tensor views and the memfd seals the arenas rely on.
package sdk

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/sdbridge/sdbridge/plugins/sdk/shm"
	"golang.org/x/sys/unix"
)

func TestCheckBounds(t *testing.T) {
	tests := []struct {
		name string
		ref  TensorRef
		size uint64
		want string
	}{
		{"fits", TensorRef{Name: "w", Offset: 64, DType: F32, Shape: []int{2, 8}}, 128, ""},
		{"scalar", TensorRef{Name: "s", DType: F16}, 2, ""},
		{"past end", TensorRef{Name: "w", Offset: 64, DType: F32, Shape: []int{2, 9}}, 128, "outside arena"},
		{"offset past end", TensorRef{Name: "w", Offset: 1 << 62, DType: F32, Shape: []int{1}}, 128, "outside arena"},
		{"overflow", TensorRef{Name: "w", DType: F32, Shape: []int{1 << 30, 1 << 30, 1 << 30}}, 128, "invalid shape"},
		{"negative", TensorRef{Name: "w", DType: F32, Shape: []int{-2, -2}}, 128, "invalid shape"},
		{"misaligned", TensorRef{Name: "w", Offset: 2, DType: F32, Shape: []int{1}}, 128, "not aligned"},
		{"dtype", TensorRef{Name: "w", DType: "F8", Shape: []int{1}}, 128, "unknown dtype"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.ref.CheckBounds(tc.size)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestParams(t *testing.T) {
	p := Params{{"lora", "a"}, {"unet", "0.5"}, {"lora", "b"}, {"unet", "x"}}
	if diff := cmp.Diff([]string{"a", "b"}, p.All("lora")); diff != "" {
		t.Fatalf("All (-want +got):\n%s", diff)
	}
	if v, _ := p.Get("lora"); v != "b" {
		t.Fatalf("Get = %q, want the last value", v)
	}
	if _, err := p.Float("unet", 1); err == nil || !strings.Contains(err.Error(), `"unet"`) {
		t.Fatalf("Float err = %v", err)
	}
	if f, err := p.Float("te", 0.25); err != nil || f != 0.25 {
		t.Fatalf("Float default = %v, %v", f, err)
	}
}

func TestTensorViews(t *testing.T) {
	mem := make([]byte, 64)
	ro, err := BindTensor(TensorRef{Name: "x", Offset: 16, DType: F32, Shape: []int{2, 2}}, mem)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ro.MutableFloat32(); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("MutableFloat32 on a read-only grant: %v", err)
	}
	rw, _ := BindTensor(TensorRef{Name: "y", Offset: 16, DType: F32, Shape: []int{4}, Writable: true}, mem)
	w, err := rw.MutableFloat32()
	if err != nil {
		t.Fatal(err)
	}
	w[3] = 7
	got, _ := ro.Float32()
	if got[3] != 7 || len(got) != 4 {
		t.Fatalf("views do not alias the arena: %v", got)
	}
	if _, err := Ref(TensorRef{Name: "u", DType: F32, Shape: []int{3}}).Float32(); err == nil {
		t.Fatal("unbound tensor returned data")
	}
	if _, err := rw.Uint16(); err == nil {
		t.Fatal("Uint16 of an F32 tensor")
	}
}

func TestArenaSeals(t *testing.T) {
	tests := []struct {
		name         string
		peerReadOnly bool
	}{{"plugin-writable", false}, {"plugin-read-only", true}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, mem, err := shm.Create("seal-test", 1<<16, tc.peerReadOnly)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			defer shm.Unmap(mem)
			mem[0] = 1 // the creator's mapping stays writable
			seals, err := shm.Seals(int(f.Fd()))
			if err != nil {
				t.Fatal(err)
			}
			want := unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_SEAL
			if tc.peerReadOnly {
				want |= unix.F_SEAL_FUTURE_WRITE
			}
			if seals != want {
				t.Fatalf("seals = %#x, want %#x", seals, want)
			}
			if err := unix.Ftruncate(int(f.Fd()), 1<<10); err == nil {
				t.Fatal("sealed arena could be shrunk")
			}
			m, err := shm.Map(int(f.Fd()), 1<<16, true)
			if tc.peerReadOnly != (err != nil) {
				t.Fatalf("writable peer mapping: err = %v", err)
			}
			shm.Unmap(m)
			r, err := shm.Map(int(f.Fd()), 1<<16, false)
			if err != nil || r[0] != 1 {
				t.Fatalf("read-only peer mapping: %v", err)
			}
			shm.Unmap(r)
		})
	}
}

func TestSideSocket(t *testing.T) {
	keep, give, err := shm.SocketPair()
	if err != nil {
		t.Fatal(err)
	}
	defer keep.Close()
	defer give.Close()
	f, mem, err := shm.Create("side-test", 4096, false)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	defer shm.Unmap(mem)
	mem[100] = 42
	tab := newArenaTable(int(give.Fd()))
	defer tab.closeAll()
	if err := shm.Send(int(keep.Fd()), shm.Header{ID: 7, Size: 4096, Writable: true}, int(f.Fd())); err != nil {
		t.Fatal(err)
	}
	if err := tab.receive(8, 4096, true); err == nil || !strings.Contains(err.Error(), "delivered arena 7") {
		t.Fatalf("mismatched id accepted: %v", err)
	}
	shm.Send(int(keep.Fd()), shm.Header{ID: 7, Size: 4096, Writable: true}, int(f.Fd()))
	if err := tab.receive(7, 4096, true); err != nil {
		t.Fatal(err)
	}
	if _, err := tab.bind(TensorRef{Name: "b", Arena: 7, Offset: 100, DType: I64, Shape: []int{1}}, false); err == nil || !strings.Contains(err.Error(), "not aligned") {
		t.Fatalf("misaligned I64 bound: %v", err)
	}
	v, err := tab.bind(TensorRef{Name: "v", Arena: 7, Offset: 96, DType: F32, Shape: []int{2}, Writable: true}, true)
	if err != nil {
		t.Fatal(err)
	}
	if v.Bytes()[4] != 42 {
		t.Fatalf("plugin mapping does not see host bytes")
	}
	if _, err := tab.bind(TensorRef{Name: "z", Arena: 9, DType: F32, Shape: []int{1}}, false); err == nil {
		t.Fatal("unmapped arena bound")
	}
}
