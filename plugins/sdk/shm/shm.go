// Package shm is the Linux shared-memory plumbing of sdbridge arenas: sealed
// memfds, their mappings, and handing their fds to another process with
// SCM_RIGHTS over a SOCK_SEQPACKET socket. Host (host/arena.go), plugins
// (package sdk) and the test harness use it.
//
// It deliberately knows nothing about tensors, arenas ids beyond a number, or
// gRPC: it moves file descriptors and maps bytes.
package shm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Create makes a memfd of size bytes, maps it read-write for the caller and
// seals its size (F_SEAL_SHRINK|F_SEAL_GROW, then F_SEAL_SEAL) so no process
// can truncate it under a mapping. With peerReadOnly the memfd also gets
// F_SEAL_FUTURE_WRITE: the caller's mapping stays writable, but every later
// writable shared mapping (a plugin's) fails with EPERM.
func Create(name string, size int, peerReadOnly bool) (*os.File, []byte, error) {
	if size <= 0 {
		return nil, nil, fmt.Errorf("shm: arena %q: size %d must be positive", name, size)
	}
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, nil, fmt.Errorf("shm: memfd_create %q: %w", name, err)
	}
	f := os.NewFile(uintptr(fd), name)
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("shm: ftruncate %q to %d bytes: %w", name, size, err)
	}
	mem, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("shm: mmap %q (%d bytes): %w", name, size, err)
	}
	seals := unix.F_SEAL_SHRINK | unix.F_SEAL_GROW
	if peerReadOnly {
		seals |= unix.F_SEAL_FUTURE_WRITE
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals|unix.F_SEAL_SEAL); err != nil {
		unix.Munmap(mem)
		f.Close()
		return nil, nil, fmt.Errorf("shm: sealing %q: %w", name, err)
	}
	return f, mem, nil
}

// Seals returns the seals of a memfd (F_GET_SEALS).
func Seals(fd int) (int, error) { return unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0) }

// Map maps size bytes of fd, shared, read-write or read-only.
func Map(fd int, size int, writable bool) ([]byte, error) {
	prot := unix.PROT_READ
	if writable {
		prot |= unix.PROT_WRITE
	}
	mem, err := unix.Mmap(fd, 0, size, prot, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("shm: mmap fd %d (%d bytes, writable=%v): %w", fd, size, writable, err)
	}
	return mem, nil
}

// Unmap releases a mapping made by Create or Map.
func Unmap(mem []byte) error {
	if mem == nil {
		return nil
	}
	return unix.Munmap(mem)
}

// SocketPair returns the two ends of a close-on-exec SOCK_SEQPACKET unix
// socket pair: one to keep, one to give to a child in cmd.ExtraFiles (exec
// clears close-on-exec on ExtraFiles).
func SocketPair() (keep, give *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("shm: socketpair: %w", err)
	}
	return os.NewFile(uintptr(fds[0]), "sdbridge-side-host"), os.NewFile(uintptr(fds[1]), "sdbridge-side-plugin"), nil
}

// Header is the fixed payload sent with each fd.
type Header struct {
	ID       uint32
	Writable bool
	Size     uint64
}

const headerLen = 16

// ErrClosed is returned by Recv when the peer closed the socket.
var ErrClosed = errors.New("shm: side socket closed")

// Send passes fd with its header as one SCM_RIGHTS message.
func Send(sock int, h Header, fd int) error {
	var buf [headerLen]byte
	binary.LittleEndian.PutUint32(buf[0:], h.ID)
	if h.Writable {
		buf[4] = 1
	}
	binary.LittleEndian.PutUint64(buf[8:], h.Size)
	if err := unix.Sendmsg(sock, buf[:], unix.UnixRights(fd), nil, 0); err != nil {
		return fmt.Errorf("shm: sending arena %d: %w", h.ID, err)
	}
	return nil
}

// Recv receives one message sent by Send. The returned fd belongs to the
// caller (close it after mapping).
func Recv(sock int) (Header, int, error) {
	var h Header
	buf := make([]byte, headerLen)
	oob := make([]byte, unix.CmsgSpace(4))
	n, oobn, flags, _, err := unix.Recvmsg(sock, buf, oob, unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		return h, -1, fmt.Errorf("shm: receiving arena fd: %w", err)
	}
	if n == 0 && oobn == 0 {
		return h, -1, ErrClosed
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		return h, -1, fmt.Errorf("shm: parsing control message: %w", err)
	}
	var fds []int
	for _, m := range msgs {
		got, err := unix.ParseUnixRights(&m)
		if err == nil {
			fds = append(fds, got...)
		}
	}
	if len(fds) != 1 || n != headerLen || flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return h, -1, fmt.Errorf("shm: malformed side-socket message (%d bytes, %d fds, flags %#x)", n, len(fds), flags)
	}
	h.ID = binary.LittleEndian.Uint32(buf[0:])
	h.Writable = buf[4] == 1
	h.Size = binary.LittleEndian.Uint64(buf[8:])
	return h, fds[0], nil
}
